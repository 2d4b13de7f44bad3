"""What every blueprint shares: JSON answers and errors, request parsing, list pages, and
the leader routing of reads and writes (a follower forwards to the leader).

Every error is JSON `{"error": code, "message": text}` with a 4xx or 503 status. Writes are
proposed only on the leader (followers forward them); reads are linearizable unless
`?consistency=stale`. Lists come in pages bounded in count and bytes, built a few at a time.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import quote, urlsplit

import orjson
import requests
import urllib3
from flask import Response, current_app, g, request
from werkzeug.routing import BaseConverter

from auth import Authenticator
from cluster_manager import ClientError, Node, no_leader

MAX_BODY = 1024 * 1024
DEFAULT_PAGE = 1000
MAX_PAGE = 10_000
MAX_PAGE_BYTES = 4 * 1024 * 1024  # a list page ends at this many bytes of items (one item always fits)
LIST_SLOTS = 4  # list pages built or sent at once; more get 503 busy
SEND_CHUNK = 64 * 1024
ENCODE_BATCH = 64
FORWARDED_HEADER = "X-PickleDB-Forwarded"
NEXT_OFFSET_HEADER = "X-Next-Offset"  # GET /jobs keeps its bare {key: value} body, so paging is in headers
TOTAL_HEADER = "X-Total-Count"
# What a forwarded request carries besides its body, and what of the leader's answer comes back.
FORWARDED_REQUEST_HEADERS = ("Authorization", "Idempotency-Key", "If-Match", "If-None-Match")
# What a browser page of the cluster may send (CORS preflight).
ALLOWED_REQUEST_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "If-Match", "If-None-Match",
                           "Last-Event-ID")
RELAYED_HEADERS = ("Retry-After", NEXT_OFFSET_HEADER, TOTAL_HEADER, "ETag", "Location", "WWW-Authenticate",
                   "Idempotent-Replayed", "Content-Disposition", "X-PickleDB-Backup-Index",
                   "X-PickleDB-Backup-SHA256", "X-PickleDB-Cluster")
PRINTABLE_ASCII = "".join(map(chr, range(0x21, 0x7F)))
FORWARD_POOL = 16  # connections from this node to the leader for forwarded requests
SSE_MAX_STREAMS = 16  # open event streams per node; more get 503 too_many_streams


@dataclass
class NodeContext:
    """Per-app state the blueprints share: the node and the bounded resources around it."""
    node: Node
    peers_http: requests.Session
    status_pool: ThreadPoolExecutor
    list_slots: threading.BoundedSemaphore
    stream_slots: threading.BoundedSemaphore
    authenticator: Authenticator | None

    @classmethod
    def build(cls, node: Node, authenticator: Authenticator | None = None) -> "NodeContext":
        # One bounded, shared keep-alive pool: per-thread sessions would open one connection per
        # server thread to the leader and exhaust its connection limit.
        peers_http = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=max(1, len(node.config.peers)),
                                                pool_maxsize=FORWARD_POOL, pool_block=True)
        peers_http.mount("http://", adapter)
        peers_http.mount("https://", adapter)
        if node.config.tls is not None:
            peers_http.trust_env = False  # else $REQUESTS_CA_BUNDLE would replace the cluster CA
            peers_http.verify = node.config.tls.requests_verify
            peers_http.cert = node.config.tls.requests_cert
        status_pool = ThreadPoolExecutor(max_workers=max(1, len(node.config.peers)), thread_name_prefix="status")
        return cls(node, peers_http, status_pool, threading.BoundedSemaphore(LIST_SLOTS),
                   threading.BoundedSemaphore(SSE_MAX_STREAMS), authenticator)


def ctx() -> NodeContext:
    return current_app.extensions["pickledb"]


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


# ------------------------------------------------------------------ leader routing
def forward():
    """Send this request, exactly as received, to the leader and relay its answer. With a
    cluster secret, the caller's token is replaced by its identity, signed for this request:
    the leader trusts it without seeing the token. Without one (loopback only), the token
    goes along and the leader checks it again."""
    c = ctx()
    node, peers_http = c.node, c.peers_http
    leader = node.core.leader_id
    leader_url = node.url_of(leader)  # raft ids are node ids, not URLs
    if request.headers.get(FORWARDED_HEADER) or leader_url is None or leader == node.id:
        raise no_leader()
    body, target, host = request.get_data(cache=True), request_target(request.environ), urlsplit(leader_url).netloc
    headers = {name: request.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in request.headers}
    identity = g.get("identity")
    if identity is not None and c.authenticator.signs_identities:
        headers.pop("Authorization", None)
        headers.update(c.authenticator.identity_headers(identity, request.method, target, host, body))
    prepared = peers_http.prepare_request(requests.Request(
        request.method, leader_url, data=body,
        headers={**headers, "Content-Type": "application/json", FORWARDED_HEADER: node.id,
                 "Host": host}))  # the route may be a proxy's address
    # Set after prepare(), which would decode %2e and remove dot segments.
    prepared.url = node.routes.get(leader, leader_url) + target
    try:
        resp = peers_http.send(prepared, timeout=node.request_timeout + 2, allow_redirects=False)
    except requests.RequestException as exc:
        if request.method == "GET" or never_sent(exc):
            raise ClientError(503, "no_leader", f"the leader {leader} is unreachable; retry shortly",
                              retry_after=1)
        # The leader may have received and applied it before the connection broke.
        raise ClientError(503, "unknown_outcome", f"lost the connection to the leader {leader}; "
                          "the write may or may not have been applied", retry_after=1)
    # waitress spells names its own way (ETag as Etag): look them up case-insensitively.
    headers = {name: resp.headers[name] for name in RELAYED_HEADERS if name in resp.headers}
    return Response(resp.content, status=resp.status_code, headers=headers,
                    mimetype=resp.headers.get("Content-Type", "application/json"))


def write(build_command):
    node = ctx().node
    if not node.core.role == "leader":
        return forward()
    status, body = node.propose(build_command())
    return json_response(body, status)


def read(serve):
    node = ctx().node
    if not stale_requested():
        if node.core.role != "leader":
            return forward()
        node.read_barrier()
    return serve()


def list_page(build) -> Response:
    """A list page, built and sent in one of LIST_SLOTS slots: `build()` returns its pieces
    (at most MAX_PAGE_BYTES of items) and headers. The slot is held until the last piece is
    handed to the server, so at most LIST_SLOTS pages are in memory at once."""
    list_slots = ctx().list_slots
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
