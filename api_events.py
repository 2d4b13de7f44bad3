"""The live event stream, GET /events (server-sent events), resumable by log index.

Events (each `data:` is one JSON object):
  event: change   id: <log index>   {"index", "op": "create"|"update"|"delete"|"set",
                  "id" (tasks) or "key" (set), "task" (create, update: the new task)}
                  one per committed change, in log order, each exactly once per stream
  event: applied  id: <applied index>  {"index", "term", "leader"}: this node has applied
                  everything up to index (sent when it moves, after the changes it covers)
  event: reset    id: <applied index>  {"index", "reason"}: the changes after the requested
                  index are no longer kept here (compacted into a snapshot or evicted from the
                  feed): reload (GET /tasks gives an index) and resume from there
Every `id:` is a resume point: all changes at or below it were sent. A client resumes, on this
node or another, with the `Last-Event-ID` header (what EventSource sends on reconnect) or
`?since=INDEX` (the header wins); without either the stream starts at the current applied index.
A node streams what it has applied, so a lagging follower's stream lags too.
"""
from __future__ import annotations

import time

import orjson
from flask import Blueprint, Response, request

from api_common import BadRequest, ctx, error
from auth import requires

SSE_STREAM_SECONDS = 30
SSE_KEEPALIVE_SECONDS = 10
CHANGES_PER_READ = 256  # changes taken from the feed at a time, so a far-behind client costs little memory
MAX_INDEX = 2**63 - 1

bp = Blueprint("events", __name__)


def resume_index() -> int | None:
    for raw, name in ((request.headers.get("Last-Event-ID"), "Last-Event-ID"), (request.args.get("since"), "since")):
        if raw is None:
            continue
        raw = raw.strip()
        if not raw.isdigit() or not raw.isascii() or int(raw) > MAX_INDEX:
            raise BadRequest(f"'{name}' must be a log index: an integer from 0 to {MAX_INDEX}")
        return int(raw)
    return None


def sse(event: str, index: int, data: dict) -> str:
    return f"id: {index}\nevent: {event}\ndata: {orjson.dumps(data).decode()}\n\n"


@bp.get("/events")
@requires("read")
def events():
    c = ctx()
    node = c.node
    since = resume_index()
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # no body follows, so no stream slot is taken
        return Response(mimetype="text/event-stream", headers=headers)
    if not c.stream_slots.acquire(blocking=False):
        return error(503, "too_many_streams", "too many open event streams; poll instead", retry_after=5)

    def stream():
        yield "retry: 1000\n\n"
        state = node.state
        cursor = state.applied_index if since is None else since
        announced = -1
        seen = -1
        deadline = time.monotonic() + SSE_STREAM_SECONDS
        while time.monotonic() < deadline and not node.stopping.is_set():
            with node.changes:
                if node.change_seq == seen:
                    node.changes.wait(SSE_KEEPALIVE_SECONDS)
                seen = node.change_seq
            sent = False
            while True:
                changes, applied = state.changes_after(cursor, CHANGES_PER_READ)
                if changes is None:
                    cursor = applied
                    yield sse("reset", applied, {"index": applied, "reason": "the changes after the requested "
                                                 "index are no longer kept on this node; reload"})
                    sent = True
                    continue
                for change in changes:
                    yield sse("change", change["index"], change)
                if not changes:
                    break
                cursor, sent = changes[-1]["index"], True
            # Everything up to `applied` is sent (unless the client asked to start ahead of it).
            if applied != announced and applied >= cursor:
                cursor = announced = applied
                view = node.status_view
                yield sse("applied", applied, {"index": applied, "term": view["term"], "leader": view["leader"]})
            elif not sent:
                yield ": keep-alive\n\n"
    response = Response(stream(), mimetype="text/event-stream", headers=headers)
    # The server closes every response it was given, even one whose body never started
    # (a generator's `finally` would not run then).
    response.call_on_close(c.stream_slots.release)
    node.metrics.event_streams.inc()
    response.call_on_close(node.metrics.event_streams.dec)
    return response
