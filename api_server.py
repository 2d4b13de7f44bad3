"""Flask app factory: the task API, cluster views and legacy endpoints (raft RPC: transport.py).

Every error is JSON `{"error": code, "message": text}` with a 4xx or 503 status. Writes are
proposed only on the leader (followers forward them); reads are linearizable unless
`?consistency=stale`. At the edge, before anything is proposed: only the node's own host names
are served (DNS rebinding), writes must be JSON and must not come from a foreign origin (CSRF),
and every accepted value can be encoded and replicated (depth, integer range, encoded size).
Lists come in pages bounded in count and bytes, built a few at a time.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

import orjson
import requests
import urllib3
from flask import Flask, Response, request, send_file
from flask_cors import CORS
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import BaseConverter, RequestRedirect

from cluster_manager import MAX_COMMAND_DEPTH, ClientError, Node, no_leader
from transport import raft_rpc

log = logging.getLogger("pickledb_cluster.api")

MAX_BODY = 1024 * 1024
MAX_TITLE = 500
MAX_DESCRIPTION = 10_000
MAX_KEY = 500
MAX_DEPTH = MAX_COMMAND_DEPTH - 1  # nesting levels of a /set value, which sits one level inside its command
MAX_VALUE_BYTES = MAX_BODY  # a /set value once encoded (floats like 1e9 grow when re-encoded)
INT_MIN, INT_MAX = -2**63, 2**63 - 1
MAX_TASK_ID = 64  # ids are 32 hex digits: a longer one names no task, so nothing is replicated
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a list page ends at this many bytes of items (one item always fits)
LIST_SLOTS = 4  # list pages built or sent at once; more get 503 busy
SEND_CHUNK = 64 * 1024
ENCODE_BATCH = 64
TASK_FIELDS = {"title", "description", "completed"}
FORWARDED_HEADER = "X-PickleDB-Forwarded"
NEXT_OFFSET_HEADER = "X-Next-Offset"  # GET /jobs keeps its bare {key: value} body, so paging is in headers
TOTAL_HEADER = "X-Total-Count"
RELAYED_HEADERS = ("Retry-After", NEXT_OFFSET_HEADER, TOTAL_HEADER)
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))
FORWARD_POOL = 16  # connections from this node to the leader for forwarded requests
SSE_MAX_STREAMS = 16
SSE_STREAM_SECONDS = 30
SSE_KEEPALIVE_SECONDS = 10
DASHBOARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "examples", "node_dashboard.html")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def json_response(body, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_headers(retry_after: float | None) -> dict:
    return {"Retry-After": str(int(max(1, retry_after)))} if retry_after else {}


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": code, "message": message})


def error(status: int, code: str, message: str, retry_after: float | None = None) -> Response:
    return Response(error_body(code, message), status=status, headers=error_headers(retry_after),
                    mimetype="application/json")


def never_sent(exc: requests.RequestException) -> bool:
    """True only when the request certainly did not reach the server (the connection failed)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str = "invalid_request"):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def request_target(environ) -> str:
    """The path and query exactly as the client sent them, to forward: the decoded path would
    turn %3F into a query, %23 into a fragment and %2e%2e into a parent directory. Waitress and
    werkzeug keep the request line's target, as latin-1 text, in REQUEST_URI."""
    raw = environ["REQUEST_URI"]
    if not raw.startswith("/"):  # absolute form (http://host/path): keep only the path and query
        parts = urlsplit(raw)
        raw = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return quote(raw.encode("latin-1"), safe=PRINTABLE_ASCII)


def host_name(url: str) -> str:
    """The host of a URL as it appears in a Host header: "127.0.0.1", "[::1]", "example.com"."""
    name = urlsplit(url).hostname or ""
    return f"[{name}]" if ":" in name else name


def new_task(fields: dict) -> dict:
    """A task document for validated create fields; its id and timestamps are chosen here,
    once, before the entry is proposed, so every replica stores identical data."""
    stamp = now_iso()
    return {"id": uuid.uuid4().hex, "title": fields["title"], "description": fields.get("description", ""),
            "completed": fields.get("completed", False), "created_at": stamp, "updated_at": stamp,
            "version": 1}


# ------------------------------------------------------------------ validation
def json_object() -> dict:
    raw = request.get_data(cache=True)
    if not raw:
        raise BadRequest("request body must be a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}")
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def check_value(value, depth: int = 1) -> bool:
    """Refuse what could not be stored exactly or encoded: nesting deeper than MAX_DEPTH and
    integers outside the signed 64-bit range. Returns True when `value` holds a float of
    magnitude 2**63 or more: orjson parses integer literals beyond 64 bits as floats, so such a
    float may be a rounded integer, and the caller must look at the literal."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        items = (value,)
        depth = 0
    if depth > MAX_DEPTH:
        raise BadRequest(f"'value' nests deeper than {MAX_DEPTH} levels")
    huge = False
    for item in items:
        kind = type(item)
        if kind is int:
            if not INT_MIN <= item <= INT_MAX:
                raise BadRequest(f"integers must be between {INT_MIN} and {INT_MAX}")
        elif kind is float:
            huge = huge or abs(item) >= 2.0**63
        elif kind is dict or kind is list:
            huge = check_value(item, depth + 1) or huge
    return huge


def check_integer_literals(raw: bytes) -> None:
    """Refuse a body with an integer literal outside the signed 64-bit range (orjson would have
    made it a float). Only called when a huge float was seen, so the slower parser is rare."""
    def parse_int(literal: str) -> int:
        try:
            number = int(literal)
        except ValueError:  # more digits than Python converts
            number = INT_MAX + 1
        if not INT_MIN <= number <= INT_MAX:
            raise BadRequest(f"integers must be between {INT_MIN} and {INT_MAX}")
        return number
    json.loads(raw, parse_int=parse_int)


def encode_page(items: list, encode) -> tuple[list[bytes], int]:
    """Encodes items until MAX_PAGE_BYTES; returns the pieces, comma-separated, and how many
    items they hold. The first item always fits (a task or a value is at most about 1 MiB).
    `encode(batch)` is a batch's items, comma-separated: one orjson call encodes ENCODE_BATCH
    items (per item, a page of 10,000 small tasks took 14 ms instead of 1)."""
    pieces, size, count = [], 0, 0

    def add(piece: bytes, items: int) -> None:
        nonlocal size, count
        if pieces:
            pieces.append(b",")
        pieces.append(piece)
        size, count = size + len(piece) + 1, count + items
    for start in range(0, len(items), ENCODE_BATCH):
        batch = items[start:start + ENCODE_BATCH]
        piece = encode(batch)
        if size + len(piece) <= MAX_PAGE_BYTES:
            add(piece, len(batch))
            continue
        for item in batch:  # the page ends inside this batch
            piece = encode([item])
            if count and size + len(piece) > MAX_PAGE_BYTES:
                break
            add(piece, 1)
        break
    return pieces, count


def chunks(pieces: list[bytes]):
    """The pieces, joined into chunks of about SEND_CHUNK bytes: few writes, and never a second
    copy of a whole page (waitress keeps up to 1 MiB of a response in memory, then spools)."""
    group, size = [], 0
    for piece in pieces:
        group.append(piece)
        size += len(piece)
        if size >= SEND_CHUNK:
            yield b"".join(group)
            group, size = [], 0
    if group:
        yield b"".join(group)


class Slot:
    """A slot taken from a semaphore, given back once, whichever way its response ends."""

    def __init__(self, semaphore: threading.Semaphore):
        self.semaphore, self.lock, self.held = semaphore, threading.Lock(), True

    def release(self) -> None:
        with self.lock:
            held, self.held = self.held, False
        if held:
            self.semaphore.release()


class AnyPathConverter(BaseConverter):
    """The rest of the path, slashes and empty segments included: every storable key has a URL."""
    regex = r"[\s\S]+"
    part_isolating = False


def validate_task_fields(body: dict, *, creating: bool) -> dict:
    unknown = sorted(set(body) - TASK_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: title, description, completed")
    if creating and "title" not in body:
        raise BadRequest("field 'title' is required")
    if not creating and not body:
        raise BadRequest("nothing to update: give at least one of title, description, completed")
    if "title" in body:
        title = body["title"]
        if not isinstance(title, str) or not title.strip():
            raise BadRequest("'title' must be a non-empty string")
        if len(title) > MAX_TITLE:
            raise BadRequest(f"'title' is longer than {MAX_TITLE} characters")
    if "description" in body:
        desc = body["description"]
        if not isinstance(desc, str):
            raise BadRequest("'description' must be a string")
        if len(desc) > MAX_DESCRIPTION:
            raise BadRequest(f"'description' is longer than {MAX_DESCRIPTION} characters")
    if "completed" in body and not isinstance(body["completed"], bool):
        raise BadRequest("'completed' must be true or false")
    return body


def stale_requested() -> bool:
    consistency = request.args.get("consistency", "linearizable")
    if consistency not in ("linearizable", "stale"):
        raise BadRequest("'consistency' must be 'linearizable' or 'stale'")
    return consistency == "stale"


def page_args() -> tuple[int, int]:
    def number(name, default, low, high):
        raw = request.args.get(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise BadRequest(f"'{name}' must be an integer")
        if not low <= value <= high:
            raise BadRequest(f"'{name}' must be between {low} and {high}")
        return value
    return number("limit", DEFAULT_PAGE, 1, MAX_PAGE), number("offset", 0, 0, 10**12)


# ------------------------------------------------------------------ app factory
def authority(name: str, port: int) -> str:
    """host[:port] as a Host header or an origin carries it (no port when it is the default)."""
    return name if port == 80 else f"{name}:{port}"


def served_names(node: Node, extra_hosts=()) -> tuple[set[str], set[str]]:
    """The Host header values this node answers to, and the origins whose pages may write to it.

    Hosts: the loopback names, the node's own host and its peers' hosts, each with this node's
    port, and `extra_hosts` ("name" with this node's port, or "name:port"). Origins: the pages
    of any node of the cluster: this node under any of its host names, and each peer's URL
    (with every loopback name when its host is one)."""
    port = urlsplit(node.id).port
    names = {*LOOPBACK_NAMES, host_name(node.id), *map(host_name, node.config.peers)}
    hosts = {authority(name, port) for name in names}
    for extra in extra_hosts:
        extra = extra.lower()
        hosts.add(extra if re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]+):\d+", extra) else authority(extra, port))
    origins = {f"http://{host}" for host in hosts}
    for peer in node.config.peers:
        name, peer_port = host_name(peer), urlsplit(peer).port or 80
        for variant in LOOPBACK_NAMES if name in LOOPBACK_NAMES else (name,):
            origins.add(f"http://{authority(variant, peer_port)}")
    return hosts, origins


def create_app(node: Node, extra_hosts=()) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False
    app.url_map.merge_slashes = False  # no redirects (Flask sends them as HTML); /jobs/a//b reads key "a//b"
    app.url_map.converters["anypath"] = AnyPathConverter
    hosts, origins = served_names(node, extra_hosts)
    CORS(app, origins=sorted(origins), expose_headers=list(RELAYED_HEADERS))
    # One bounded, shared keep-alive pool: per-thread sessions would open one connection per
    # server thread to the leader and exhaust its connection limit.
    peers_http = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=max(1, len(node.config.peers)),
                                            pool_maxsize=FORWARD_POOL, pool_block=True)
    peers_http.mount("http://", adapter)
    status_pool = ThreadPoolExecutor(max_workers=max(1, len(node.config.peers)), thread_name_prefix="status")
    sse_slots = threading.BoundedSemaphore(SSE_MAX_STREAMS)
    list_slots = threading.BoundedSemaphore(LIST_SLOTS)

    # -------------------------------------------------------------- errors
    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return error(exc.status, exc.code, exc.message)

    @app.errorhandler(ClientError)
    def client_error(exc: ClientError):
        return error(exc.status, exc.code, exc.message, exc.retry_after)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error(exc.code or 500, code, exc.description or exc.name)
        for name, value in exc.get_headers():  # e.g. Allow on a 405
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error(500, "internal_error", "the node hit an unexpected error")

    # -------------------------------------------------------------- edge checks
    @app.before_request
    def edge_checks():
        req = request._get_current_object()  # each use of the proxy costs about 1 us
        environ = req.environ
        host = environ.get("HTTP_HOST", "")
        if host.lower() not in hosts:
            # DNS rebinding: a foreign name resolved to this address must not reach the API.
            raise BadRequest(f"this node does not answer to the host name {host!r}", 421, "misdirected_request")
        if isinstance(req.routing_exception, RequestRedirect):
            # Only an empty path gets here (slashes are not merged); Flask would send the
            # redirect as an HTML page, past the error handlers.
            raise NotFound()
        method = environ["REQUEST_METHOD"]
        if method not in STATE_CHANGING:
            return
        origin = environ.get("HTTP_ORIGIN")
        foreign = (origin.lower() not in origins if origin is not None
                   else environ.get("HTTP_SEC_FETCH_SITE") == "cross-site")
        if foreign:
            raise BadRequest("writes from pages of other origins are refused", 403, "forbidden_origin")
        # A browser sends a cross-origin text/plain or form body without asking (no preflight).
        if (method != "DELETE" and req.routing_exception is None
                and environ.get("CONTENT_TYPE", "").partition(";")[0].strip().lower() != "application/json"):
            raise BadRequest("the body must be sent as Content-Type: application/json", 415,
                             "unsupported_media_type")

    # -------------------------------------------------------------- leader routing
    def forward():
        """Send this request, exactly as received, to the leader and relay its answer."""
        leader = node.core.leader_id
        if request.headers.get(FORWARDED_HEADER) or leader is None or leader == node.id:
            raise no_leader()
        prepared = peers_http.prepare_request(requests.Request(
            request.method, leader, data=request.get_data(cache=True),
            headers={"Content-Type": "application/json", FORWARDED_HEADER: node.id,
                     "Host": urlsplit(leader).netloc}))  # the route may be a proxy's address
        # Set after prepare(), which would decode %2e and remove dot segments.
        prepared.url = node.routes.get(leader, leader) + request_target(request.environ)
        try:
            resp = peers_http.send(prepared, timeout=node.request_timeout + 2, allow_redirects=False)
        except requests.RequestException as exc:
            if request.method == "GET" or never_sent(exc):
                raise ClientError(503, "no_leader", f"the leader {leader} is unreachable; retry shortly",
                                  retry_after=1)
            # The leader may have received and applied it before the connection broke.
            raise ClientError(503, "unknown_outcome", f"lost the connection to the leader {leader}; "
                              "the write may or may not have been applied", retry_after=1)
        headers = {k: v for k, v in resp.headers.items() if k in RELAYED_HEADERS}
        return Response(resp.content, status=resp.status_code, headers=headers,
                        mimetype=resp.headers.get("Content-Type", "application/json"))

    def write(build_command):
        if not node.core.role == "leader":
            return forward()
        status, body = node.propose(build_command())
        return json_response(body, status)

    def read(serve):
        if not stale_requested():
            if node.core.role != "leader":
                return forward()
            node.read_barrier()
        return serve()

    def list_page(build) -> Response:
        """A list page, built and sent in one of LIST_SLOTS slots: `build()` returns its pieces
        (at most MAX_PAGE_BYTES of items) and headers. The slot is held until the last piece is
        handed to the server, so at most LIST_SLOTS pages are in memory at once."""
        if not list_slots.acquire(blocking=False):
            raise ClientError(503, "busy", "too many lists are being read at once; retry shortly", retry_after=1)
        slot = Slot(list_slots)
        try:
            pieces, headers = build()
        except BaseException:
            slot.release()
            raise
        headers["Content-Length"] = str(sum(map(len, pieces)))

        def body():
            try:
                yield from chunks(pieces)
            finally:
                slot.release()
        response = Response(body(), headers=headers, mimetype="application/json")
        response.call_on_close(slot.release)  # also when the body never starts (HEAD)
        return response

    def no_such_task(task_id):
        return error(404, "not_found", f"task {task_id} does not exist")

    # -------------------------------------------------------------- tasks
    @app.get("/tasks")
    def list_tasks():
        limit, offset = page_args()

        def build():
            tasks, total, index = node.state.list_tasks(limit, offset)
            pieces, count = encode_page(tasks, lambda batch: orjson.dumps(batch)[1:-1])
            after = offset + count
            tail = orjson.dumps({"total": total, "index": index, "next_offset": after if after < total else None})
            pieces.insert(0, b'{"tasks":[')
            pieces.append(b"]," + tail[1:])
            return pieces, {}
        return read(lambda: list_page(build))

    @app.get("/tasks/<task_id>")
    def get_task(task_id):
        def serve():
            task = node.state.get_task(task_id)
            if task is None:
                return no_such_task(task_id)
            return json_response(task)
        return read(serve)

    @app.post("/tasks")
    def create_task():
        body = validate_task_fields(json_object(), creating=True)
        return write(lambda: {"op": "create", "task": new_task(body)})

    @app.put("/tasks/<task_id>")
    def update_task(task_id):
        body = validate_task_fields(json_object(), creating=False)
        if len(task_id) > MAX_TASK_ID:
            return no_such_task(task_id[:MAX_TASK_ID] + "...")
        return write(lambda: {"op": "update", "id": task_id, "fields": body, "updated_at": now_iso()})

    @app.delete("/tasks/<task_id>")
    def delete_task(task_id):
        if len(task_id) > MAX_TASK_ID:
            return no_such_task(task_id[:MAX_TASK_ID] + "...")
        return write(lambda: {"op": "delete", "id": task_id})

    # -------------------------------------------------------------- legacy key-value
    @app.post("/set")
    def set_value():
        body = json_object()
        unknown = sorted(set(body) - {"key", "value"})
        if unknown:
            raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: key, value")
        key = body.get("key")
        if not isinstance(key, str) or not key:
            raise BadRequest("'key' must be a non-empty string")
        if len(key) > MAX_KEY:
            raise BadRequest(f"'key' is longer than {MAX_KEY} characters")
        if "value" not in body:
            raise BadRequest("field 'value' is required")
        value = body["value"]
        if check_value(value):
            check_integer_literals(request.get_data(cache=True))
        size = len(orjson.dumps(value))
        if size > MAX_VALUE_BYTES:
            raise BadRequest(f"'value' encodes to {size} bytes, more than {MAX_VALUE_BYTES}", 413,
                             "request_entity_too_large")
        return write(lambda: {"op": "set", "key": key, "value": value})

    @app.get("/jobs")
    def jobs():
        limit, offset = page_args()

        def build():
            items, total = node.state.list_kv(limit, offset)
            pieces, count = encode_page(items, lambda batch: orjson.dumps(dict(batch))[1:-1])
            headers = {TOTAL_HEADER: str(total)}
            if offset + count < total:
                headers[NEXT_OFFSET_HEADER] = str(offset + count)
            pieces.insert(0, b"{")
            pieces.append(b"}")
            return pieces, headers
        return read(lambda: list_page(build))

    @app.get("/jobs/<anypath:key>")
    def job(key):
        def serve():
            missing = object()
            value = node.state.get_kv(key, missing)
            if value is missing:
                return error(404, "not_found", f"key {key} does not exist")
            return json_response({"key": key, "value": value})
        return read(serve)

    # -------------------------------------------------------------- cluster views
    @app.get("/health")
    def health():
        view = node.status()
        view["status"] = "ok"
        return json_response(view)

    @app.get("/status")
    def status():
        return json_response(node.status())

    @app.get("/heartbeat")
    def heartbeat_info():
        view = node.status()
        return json_response({k: view[k] for k in ("node_id", "role", "term", "leader", "commit_index")})

    @app.get("/cluster/status")
    def cluster_status():
        me = node.status()

        def fetch(peer):
            try:
                resp = peers_http.get(node.routes.get(peer, peer) + "/status", headers={"Host": urlsplit(peer).netloc},
                                      timeout=max(0.3, min(1.0, node.config.election_timeout)))
                return resp.json() if resp.status_code == 200 else None
            except (requests.RequestException, ValueError):
                return None
        views = dict(zip(node.config.peers, status_pool.map(fetch, node.config.peers)))
        views[node.id] = me
        top = max(v.get("commit_index", 0) for v in views.values() if v)
        nodes = []
        for url in sorted(views):
            v = views[url]
            entry = {"url": url, "reachable": v is not None, "self": url == node.id}
            if v is not None:
                entry.update(role=v["role"], is_leader=v["is_leader"], term=v["term"], leader=v["leader"],
                             commit_index=v["commit_index"], applied_index=v["applied_index"],
                             lag=max(0, top - v["applied_index"]))
            else:
                entry.update(role="unreachable", is_leader=False, lag=None)
            if url in me["peers"]:
                entry["match_index"] = me["peers"][url]["match_index"]
                entry["replication_lag"] = me["peers"][url]["lag"]
            nodes.append(entry)
        leader = next((n["url"] for n in nodes if n.get("is_leader")), me["leader"])
        return json_response({**me, "cluster_leader": leader, "cluster_size": len(nodes),
                              "quorum": len(nodes) // 2 + 1, "nodes": nodes})

    @app.get("/events")
    def events():
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if request.method == "HEAD":  # no body follows, so no stream slot is taken
            return Response(mimetype="text/event-stream", headers=headers)
        if not sse_slots.acquire(blocking=False):
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
        response.call_on_close(sse_slots.release)
        return response

    @app.get("/")
    def dashboard():
        return send_file(DASHBOARD, mimetype="text/html", max_age=0)

    app.wsgi_app = raft_rpc(node, app)
    return app
