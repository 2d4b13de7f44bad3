"""Client authentication: which permission each route needs.

Every route declares what it needs with `requires(...)` or `open_route`; the app refuses to
start if a route declares nothing, so no route is ever open by mistake.
"""
from __future__ import annotations

ROLES = ("read", "write", "admin")  # each role includes the ones before it
PERMISSION_ATTRIBUTE = "pickledb_permission"
OPEN = "open"


def requires(role: str):
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")

    def mark(view):
        setattr(view, PERMISSION_ATTRIBUTE, role)
        return view
    return mark


def open_route(view):
    setattr(view, PERMISSION_ATTRIBUTE, OPEN)
    return view


def permission_of(view) -> str | None:
    return getattr(view, PERMISSION_ATTRIBUTE, None)
