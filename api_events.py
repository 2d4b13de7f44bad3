"""The live event stream, GET /events (server-sent events)."""
from __future__ import annotations

import time

import orjson
from flask import Blueprint, Response, request

from api_common import ctx, error
from auth import requires

SSE_STREAM_SECONDS = 30
SSE_KEEPALIVE_SECONDS = 10

bp = Blueprint("events", __name__)


@bp.get("/events")
@requires("read")
def events():
    c = ctx()
    node = c.node
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # no body follows, so no stream slot is taken
        return Response(mimetype="text/event-stream", headers=headers)
    if not c.stream_slots.acquire(blocking=False):
        return error(503, "too_many_streams", "too many open event streams; poll instead", retry_after=5)

    def stream():
        yield "retry: 1000\n\n"
        seen = -1
        deadline = time.monotonic() + SSE_STREAM_SECONDS
        while time.monotonic() < deadline and not node.stopping.is_set():
            with node.changes:
                if node.change_seq == seen:
                    node.changes.wait(SSE_KEEPALIVE_SECONDS)
                changed, seen = node.change_seq != seen, node.change_seq
            if changed:
                view = node.status()
                data = orjson.dumps({"index": view["applied_index"], "term": view["term"],
                                     "leader": view["leader"]}).decode()
                yield f"event: applied\ndata: {data}\n\n"
            else:
                yield ": keep-alive\n\n"
    response = Response(stream(), mimetype="text/event-stream", headers=headers)
    # The server closes every response it was given, even one whose body never started
    # (a generator's `finally` would not run then).
    response.call_on_close(c.stream_slots.release)
    return response
