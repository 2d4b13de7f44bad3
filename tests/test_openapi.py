"""The OpenAPI document (docs/openapi.yaml) is true of the code, and /openapi.json and /docs serve it.

The document is written by hand; these tests hold it to the routes: every client route of the
Flask app is documented with the same methods and every documented operation is a route, each
operation's security matches the permission its route declares, every error code the
client-facing modules can send is named, every link names a real operation, and the document is
valid OpenAPI 3.1. (tests/test_contract_schemathesis.py checks live answers against it;
tests/browser/test_docs_page.py loads /docs in Chromium.)
"""
import glob
import os
import re

import pytest
import schemathesis
from flask.testing import FlaskClient

import api_docs
from api_server import create_app
from auth import OPEN, permission_of
from harness import ROOT
from test_api import node  # noqa: F401 (fixture)
from transport import RAFT_RPC

METHODS = {"get", "put", "post", "delete", "patch"}
# Flask adds OPTIONS (CORS preflight) to every rule and HEAD to every GET rule; the document
# says so once instead of listing them.
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def api_client(node):  # noqa: F811
    """Flask's test client on the node's app, addressed with the node's own host and port."""
    app = create_app(node)
    base = f"http://127.0.0.1:{node.config.port}"

    class Client(FlaskClient):
        def open(self, *args, **kwargs):
            kwargs.setdefault("base_url", base)
            return super().open(*args, **kwargs)
    app.test_client_class = Client
    return app.test_client()


@pytest.fixture(scope="module")
def document():
    return api_docs.load_document()


def openapi_path(rule: str) -> str:
    """/tasks/<task_id> -> /tasks/{task_id}; /jobs/<anypath:key> -> /jobs/{key}."""
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule)


def app_operations(app) -> dict[tuple[str, str], str]:
    """(OpenAPI path, method) -> endpoint, for every client route of the app."""
    operations = {}
    for rule in app.url_map.iter_rules():
        for method in rule.methods - IMPLICIT_METHODS:
            operations[(openapi_path(rule.rule), method.lower())] = rule.endpoint
    return operations


def documented_operations(document) -> dict[tuple[str, str], dict]:
    return {(path, method): op for path, item in document["paths"].items()
            for method, op in item.items() if method in METHODS}


def resolve(document, item: dict) -> dict:
    """The object a local `$ref` points at (or the item itself)."""
    ref = item.get("$ref")
    if ref is None:
        return item
    target = document
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return target


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    schemathesis.openapi.from_dict(document).validate()  # raises on any violation of the 3.1 schema
    ids = [op["operationId"] for op in documented_operations(document).values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def test_every_route_is_documented_with_its_methods_and_nothing_else(node):  # noqa: F811
    document = api_docs.load_document()
    app = api_client(node).application
    in_app = set(app_operations(app))
    in_document = set(documented_operations(document))
    undocumented = sorted(in_app - in_document)
    not_served = sorted(in_document - in_app)
    assert not undocumented, f"routes missing from docs/openapi.yaml: {undocumented}"
    assert not not_served, f"documented operations the app does not serve: {not_served}"
    # Node-to-node Raft endpoints are internal (cluster secret) and excluded explicitly.
    for path in RAFT_RPC:
        assert (path, "post") not in in_document, f"internal POST {path} must not be documented"
        assert (path, "post") not in in_app, f"POST {path} is served by transport.raft_rpc, not Flask"


def test_each_operation_needs_what_its_route_declares(node):  # noqa: F811
    """Open routes (auth.open_route) say `security: []`; every other one inherits the bearer scheme."""
    document = api_docs.load_document()
    app = api_client(node).application
    for key, endpoint in app_operations(app).items():
        op = documented_operations(document).get(key)
        if op is None:
            continue  # reported by the test above
        open_in_code = permission_of(app.view_functions[endpoint]) == OPEN
        open_in_document = op.get("security") == []
        assert open_in_code == open_in_document, f"{key}: open in code {open_in_code}, in document {open_in_document}"
        if not open_in_code:
            assert {"401", "403", "429"} <= set(op["responses"]), f"{key} must document 401, 403 and 429"


# Modules whose errors reach clients, and codes that never may: internal_error is a 500 (a bug,
# refused by the contract run); bad_message and cluster_mismatch answer peers' Raft messages.
CLIENT_ERROR_SOURCES = ("api_*.py", "auth.py", "cluster_manager.py", "task_state.py", "http_server.py")
NOT_CLIENT_CODES = {"internal_error", "bad_message", "cluster_mismatch"}
ERROR_CODE_PATTERNS = (
    r'(?:ClientError|RequestRefused|AuthError|error)\(\s*\d{3},\s*"([a-z_]+)"',  # (status, code, ...)
    r'BadRequest\((?:[^()]|\([^()]*\))*?,\s*\d{3},\s*"([a-z_]+)"\)',  # (message, status, code)
    r'"error":\s*"([a-z_]+)"',
    r'\d{3}:\s*"([a-z_]+)"',  # http_server.ERROR_CODES
)


def test_every_error_code_the_code_sends_is_documented(document):
    """Each `error` code a client can get, found in the source, is named in the document."""
    text = open(api_docs.DOCUMENT, encoding="utf-8").read()
    codes = {"invalid_request"}  # BadRequest's default
    for pattern in CLIENT_ERROR_SOURCES:
        for path in glob.glob(os.path.join(ROOT, pattern)):
            source = open(path, encoding="utf-8").read()
            for regex in ERROR_CODE_PATTERNS:
                codes.update(re.findall(regex, source, re.S))
    assert {"no_leader", "not_found", "busy", "misdirected_request"} <= codes  # the patterns still match
    named = set(re.findall(r"[a-z_]+", " ".join(re.findall(r"`([^`]+)`", text))))  # words in `code` spans
    missing = sorted(codes - NOT_CLIENT_CODES - named)
    assert not missing, f"error codes the nodes send that docs/openapi.yaml does not name: {missing}"


def test_every_503_and_429_says_when_to_retry(document):
    for key, op in documented_operations(document).items():
        for status in ("503", "429"):
            answer = op["responses"].get(status)
            if answer is None:
                continue
            answer = resolve(document, answer)
            assert "Retry-After" in answer.get("headers", {}), f"{key} {status} must carry Retry-After"


def test_links_name_real_operations_and_parameters(document):
    operations = {op["operationId"]: (path, op) for (path, _), op in documented_operations(document).items()}
    links = 0
    for (path, method), op in documented_operations(document).items():
        for status, answer in op["responses"].items():
            for name, link in answer.get("links", {}).items():
                links += 1
                assert link["operationId"] in operations, f"{method} {path} {status} link {name}"
                target_path, target = operations[link["operationId"]]
                declared = {resolve(document, p)["name"] for p in
                            document["paths"][target_path].get("parameters", []) + target.get("parameters", [])}
                for parameter in link["parameters"]:
                    assert parameter.removeprefix("header.") in declared, f"link {name}: {parameter}"
    # create -> read -> conditional update -> delete is reachable by links
    assert links >= 6


def test_openapi_json_is_the_document_as_json(node):  # noqa: F811
    client = api_client(node)
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == api_docs.load_document()
    assert permission_of(client.application.view_functions["docs.openapi_document"]) == OPEN


def test_the_document_lists_the_assets_the_node_serves(document):
    asset = document["paths"]["/docs/{asset}"]["get"]["parameters"][0]
    assert sorted(asset["schema"]["enum"]) == sorted(api_docs.ASSETS)


def test_docs_assets_are_only_the_listed_files(node):  # noqa: F811
    client = api_client(node)
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe" not in policy
    html = page.get_data(as_text=True)
    assert "<script>" not in html  # no inline script: only files the policy allows
    for src in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert src.startswith("/docs/"), src
        asset = client.get(src)
        assert asset.status_code == 200, src
    for name, (_, mimetype) in api_docs.ASSETS.items():
        assert client.get(f"/docs/{name}").mimetype == mimetype
    for probe in ("/docs/VERSION", "/docs/..%2fapi_docs.py", "/docs/%2e%2e", "/docs/oauth2-redirect.html"):
        answer = client.get(probe)
        assert answer.status_code == 404 and answer.get_json()["error"] == "not_found", probe
