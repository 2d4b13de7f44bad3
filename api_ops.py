"""Operations: metrics, health probes and backups (issue 13; routes to come)."""
from __future__ import annotations

from flask import Blueprint

bp = Blueprint("ops", __name__)
