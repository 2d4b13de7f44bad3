"""Flask app factory: the task API, cluster endpoints, legacy endpoints and node-to-node RPC.

Every error is JSON `{"error": code, "message": text}` with a 4xx or 503 status. Writes are
proposed only on the leader (followers forward them); reads are linearizable unless
`?consistency=stale`.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import orjson
import requests
import urllib3
from flask import Flask, Response, request, send_file
from flask_cors import CORS
from werkzeug.exceptions import HTTPException

from cluster_manager import ClientError, Node, no_leader
from transport import raft_rpc

log = logging.getLogger("pickledb_cluster.api")

MAX_BODY = 1024 * 1024
MAX_TITLE = 500
MAX_DESCRIPTION = 10_000
MAX_KEY = 500
MAX_PAGE = 10_000
TASK_FIELDS = {"title", "description", "completed"}
FORWARDED_HEADER = "X-PickleDB-Forwarded"
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


def page_args() -> tuple[int | None, int]:
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
    return number("limit", None, 1, MAX_PAGE), number("offset", 0, 0, 10**12)


# ------------------------------------------------------------------ app factory
def create_app(node: Node) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.json.sort_keys = False
    origins = set()
    for url in [node.id, *node.config.peers]:
        origins.add(url)
        origins.add(url.replace("://127.0.0.1:", "://localhost:"))
        origins.add(url.replace("://localhost:", "://127.0.0.1:"))
    CORS(app, origins=sorted(origins), expose_headers=["Retry-After"])
    # One bounded, shared keep-alive pool: per-thread sessions would open one connection per
    # server thread to the leader and exhaust its connection limit.
    peers_http = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=max(1, len(node.config.peers)),
                                            pool_maxsize=FORWARD_POOL, pool_block=True)
    peers_http.mount("http://", adapter)
    status_pool = ThreadPoolExecutor(max_workers=max(1, len(node.config.peers)), thread_name_prefix="status")
    sse_slots = threading.BoundedSemaphore(SSE_MAX_STREAMS)

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
        return error(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return error(500, "internal_error", "the node hit an unexpected error")

    # -------------------------------------------------------------- leader routing
    def forward():
        """Send this request to the leader and relay its answer."""
        leader = node.core.leader_id
        if request.headers.get(FORWARDED_HEADER) or leader is None or leader == node.id:
            raise no_leader()
        target = node.routes.get(leader, leader) + request.full_path.rstrip("?")
        try:
            resp = peers_http.request(request.method, target, data=request.get_data(cache=True),
                                      headers={"Content-Type": "application/json", FORWARDED_HEADER: node.id},
                                      timeout=node.request_timeout + 2)
        except requests.RequestException as exc:
            if request.method == "GET" or never_sent(exc):
                raise ClientError(503, "no_leader", f"the leader {leader} is unreachable; retry shortly",
                                  retry_after=1)
            # The leader may have received and applied it before the connection broke.
            raise ClientError(503, "unknown_outcome", f"lost the connection to the leader {leader}; "
                              "the write may or may not have been applied", retry_after=1)
        headers = {k: v for k, v in resp.headers.items() if k in ("Retry-After",)}
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

    # -------------------------------------------------------------- tasks
    @app.get("/tasks")
    def list_tasks():
        limit, offset = page_args()

        def serve():
            tasks, total = node.state.list_tasks(limit, offset)
            return json_response({"tasks": tasks, "total": total, "index": node.state.applied_index})
        return read(serve)

    @app.get("/tasks/<task_id>")
    def get_task(task_id):
        def serve():
            task = node.state.get_task(task_id)
            if task is None:
                return error(404, "not_found", f"task {task_id} does not exist")
            return json_response(task)
        return read(serve)

    @app.post("/tasks")
    def create_task():
        body = validate_task_fields(json_object(), creating=True)
        return write(lambda: {"op": "create", "task": new_task(body)})

    @app.put("/tasks/<task_id>")
    def update_task(task_id):
        body = validate_task_fields(json_object(), creating=False)
        return write(lambda: {"op": "update", "id": task_id, "fields": body, "updated_at": now_iso()})

    @app.delete("/tasks/<task_id>")
    def delete_task(task_id):
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
        return write(lambda: {"op": "set", "key": key, "value": body["value"]})

    @app.get("/jobs")
    def jobs():
        return read(lambda: json_response(node.state.all_kv()))

    @app.get("/jobs/<key>")
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
                resp = peers_http.get(node.routes.get(peer, peer) + "/status",
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
        if not sse_slots.acquire(blocking=False):
            return error(503, "too_many_streams", "too many open event streams; poll instead", retry_after=5)

        def stream():
            try:
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
            finally:
                sse_slots.release()
        return Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/")
    def dashboard():
        return send_file(DASHBOARD, mimetype="text/html", max_age=0)

    app.wsgi_app = raft_rpc(node, app)
    return app
