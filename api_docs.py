"""The API's own description: GET /openapi.json and the reference page GET /docs.

The document is written by hand (docs/openapi.yaml): the routes validate their input by hand,
so there are no schemas in the code to generate it from, and the contract is what clients and
the tests hold the code to. tests/test_openapi.py proves it matches the routes (paths and
methods, both ways) and tests/test_contract_schemathesis.py that live answers match it.

/docs is Swagger UI from the pinned flask-swagger-ui package, served by the node itself (no
CDN), under a Content-Security-Policy that allows only the node's own scripts and styles.
"""
from __future__ import annotations

import os

import flask_swagger_ui
import orjson
import yaml
from flask import Blueprint, Response, send_file

from api_common import error
from auth import open_route

HERE = os.path.dirname(os.path.abspath(__file__))
DOCUMENT = os.path.join(HERE, "docs", "openapi.yaml")
PAGE_DIR = os.path.join(HERE, "docs", "reference")
SWAGGER_DIST = os.path.join(os.path.dirname(os.path.abspath(flask_swagger_ui.__file__)), "dist")
# The only files /docs/<asset> serves: name -> (path, media type).
ASSETS = {
    "swagger-ui-bundle.js": (os.path.join(SWAGGER_DIST, "swagger-ui-bundle.js"), "application/javascript"),
    "swagger-ui.css": (os.path.join(SWAGGER_DIST, "swagger-ui.css"), "text/css"),
    "favicon-32x32.png": (os.path.join(SWAGGER_DIST, "favicon-32x32.png"), "image/png"),
    "reference.js": (os.path.join(PAGE_DIR, "reference.js"), "application/javascript"),
}
PAGE_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def load_document(path: str = DOCUMENT) -> dict:
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


DOCUMENT_JSON = orjson.dumps(load_document())  # read once: the node serves what it started with

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
@open_route
def openapi_document():
    return Response(DOCUMENT_JSON, mimetype="application/json")


@bp.get("/docs")
@open_route
def reference_page():
    response = send_file(os.path.join(PAGE_DIR, "index.html"), mimetype="text/html", max_age=0)
    response.headers["Content-Security-Policy"] = PAGE_POLICY
    return response


@bp.get("/docs/<asset>")
@open_route
def reference_asset(asset):
    if asset not in ASSETS:
        return error(404, "not_found", f"no such file: /docs/{asset}")
    path, mimetype = ASSETS[asset]
    return send_file(path, mimetype=mimetype, max_age=3600)
