"""The API's own description: /openapi.json and the reference page /docs (issue 12; routes to come)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("docs", __name__)
