"""Node-to-node transport: the typed message codec, the keep-alive HTTP client and per-peer
sender threads, and the WSGI layer that answers raft RPCs in front of Flask.

Raft messages are on the path of every replicated write and the leader's CPU is the cluster's
bottleneck, so both ends are minimal: one keep-alive HTTP/1.1 connection per peer spoken over a
plain socket, and a WSGI function that skips Flask. Every message is checked by one codec in both
directions (plain type checks, no schema library): the receiver checks requests, the sender checks
the replies it gets, so nothing malformed ever reaches the Raft core.

Every request carries the sender's node id (X-PickleDB-Peer) and cluster id (X-PickleDB-Cluster);
a node answers another cluster's message with 409 cluster_mismatch (Node.check_cluster). Senders
follow the configuration: one per member, created and retired as Ready.members changes.

Node-to-node endpoints refuse anything a browser can send, with or without a cluster secret:
browsers attach Origin and Sec-Fetch-* headers and, without a CORS preflight (which these
endpoints never grant), can neither set a custom header nor declare a JSON body.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import reprlib
import socket
import threading
import time
from http import HTTPStatus
from typing import Any, Callable
from urllib.parse import urlsplit

import orjson

from raft_core import (APPEND_REQ, APPEND_RESP, SNAP_REQ, SNAP_RESP, SNAPSHOT_RETRY, TIMEOUT_NOW,
                       VOTE_REQ, VOTE_RESP, is_config, normalize_members)
from storage import StorageError, decode_snapshot

log = logging.getLogger("pickledb_cluster.transport")

RAFT_RPC = {"/heartbeat": APPEND_REQ, "/replicate": APPEND_REQ, "/raft/vote": VOTE_REQ,
            "/raft/snapshot": SNAP_REQ, "/raft/timeout_now": TIMEOUT_NOW}
RAFT_PATHS = frozenset(RAFT_RPC)  # node-to-node endpoints; POST only
MAX_PEER_MESSAGE = 8 * 1024 * 1024  # a raft message's body (also the cap on a reply we read)
MAX_SNAPSHOT_BODY = 1024 * 1024 * 1024  # an InstallSnapshot body (a whole pickledb file)
MAX_RESPONSE_HEAD = 64 * 1024
# The largest encoded command. With raft_core.MAX_APPEND_BYTES (1 MiB) per batch and at least one
# entry per message, an AppendEntries stays well within MAX_PEER_MESSAGE.
MAX_ENTRY_BYTES = 2 * 1024 * 1024

SECRET_HEADER = "X-Cluster-Secret"
PEER_HEADER = "X-PickleDB-Peer"  # the sender's node id; a custom header: a browser cannot send it without a preflight
CLUSTER_HEADER = "X-PickleDB-Cluster"  # the sender's cluster id: a node refuses another cluster's messages
MESSAGE_HEADER = "X-Raft-Message"  # an InstallSnapshot's message; its body is the snapshot file
JSON = "application/json"
LOG_EVERY = 5.0  # seconds between two log lines about the same kind of failure


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


SECRET_ENVIRON = _environ_key(SECRET_HEADER)
PEER_ENVIRON = _environ_key(PEER_HEADER)
CLUSTER_ENVIRON = _environ_key(CLUSTER_HEADER)
MESSAGE_ENVIRON = _environ_key(MESSAGE_HEADER)
BROWSER_ENVIRON = ("HTTP_ORIGIN", "HTTP_SEC_FETCH_SITE", "HTTP_SEC_FETCH_MODE")


def peer_timeout(election_timeout: float) -> float:
    """How long a sender waits for the answer to one vote or append request, all included."""
    return max(1.0, election_timeout)


def secret_token(secret: str) -> str:
    """What X-Cluster-Secret carries: the SHA-256 of the secret's UTF-8 bytes, in hex. Any secret
    works (non-ASCII, spaces, control characters, even bytes that are not UTF-8 in argv), and
    the header is always plain ASCII."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


class RequestRefused(Exception):
    """A request answered with a JSON error: {"error": code, "message": message}."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


class LimitedLog:
    """Warnings at most once per LOG_EVERY seconds per key, saying how many were held back."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.lock = threading.Lock()
        self.last: dict[Any, float] = {}
        self.held: dict[Any, int] = {}

    def warning(self, key, message: str, *args) -> None:
        now = time.monotonic()
        with self.lock:
            if now - self.last.get(key, float("-inf")) < LOG_EVERY:
                self.held[key] = self.held.get(key, 0) + 1
                return
            self.last[key] = now
            held = self.held.pop(key, 0)
        if held:
            message += f" ({held} more like this in the last {LOG_EVERY:g} s)"
        self.logger.warning(message, *args)


# ------------------------------------------------------------------ codec
_COMMON = (("term", int), ("rid", int))
_FIELDS = {
    VOTE_REQ: _COMMON + (("last_index", int), ("last_term", int)),
    VOTE_RESP: _COMMON + (("granted", bool),),
    APPEND_REQ: _COMMON + (("prev_index", int), ("prev_term", int), ("commit", int), ("seq", int),
                           ("entries", list)),
    APPEND_RESP: _COMMON + (("success", bool), ("match", int), ("hint", int), ("seq", int)),
    SNAP_REQ: _COMMON + (("last_index", int), ("last_term", int), ("seq", int)),
}
_FIELDS[SNAP_RESP] = _FIELDS[APPEND_RESP]
_FIELDS[TIMEOUT_NOW] = _COMMON
REPLY_TYPE = {VOTE_REQ: VOTE_RESP, APPEND_REQ: APPEND_RESP, SNAP_REQ: SNAP_RESP}


class Codec:
    """Encodes raft messages and checks decoded ones field by field (exact types, so a bool is
    never taken for an int; no negative numbers), so the core only ever sees well-formed ones."""

    def __init__(self, node_id: str):
        self.node_id = node_id

    @staticmethod
    def encode(msg: dict) -> bytes:
        return orjson.dumps(msg)

    def problem(self, msg, mtype: str, sender=None) -> str | None:
        """What is wrong with `msg` as a message of type `mtype` from `sender` (None: any node but
        us; a leader's requests come from members we may not know yet, e.g. when we join), or None."""
        if type(msg) is not dict:
            return f"not a JSON object but {type(msg).__name__}"
        if msg.get("type") != mtype:
            return f"type is {reprlib.repr(msg.get('type'))}, expected {mtype}"
        origin = msg.get("from")
        if type(origin) is not str or not origin or len(origin) > 256 or origin == self.node_id \
                or (sender is not None and origin != sender):
            return f"sender {reprlib.repr(origin)} is not a peer"
        if msg.get("to") != self.node_id:
            return f"addressed to {reprlib.repr(msg.get('to'))}, not to this node"
        for name, kind in _FIELDS[mtype]:
            value = msg.get(name)
            if type(value) is not kind or (kind is int and value < 0):
                return (f"field {name!r} is {reprlib.repr(value)}, expected a"
                        f"{' non-negative' if kind is int else ''} {kind.__name__}")
        if type(msg.get("pre", False)) is not bool:
            return "field 'pre' is not a boolean"
        if mtype == APPEND_REQ:
            for entry in msg["entries"]:
                if not (type(entry) is list and len(entry) == 2 and type(entry[0]) is int
                        and entry[0] >= 0 and type(entry[1]) is dict):
                    return "an entry is not [term, command object]"
                if is_config(entry[1]) and (members_problem := _members_problem(entry[1].get("members"))):
                    return f"a configuration entry is malformed: {members_problem}"
        if mtype == APPEND_REQ and msg["prev_index"] == 0 and (members_problem := _members_problem(msg.get("members"))):
            # From the start of the log, the leader's bootstrap configuration (in no entry) comes along.
            return f"field 'members' is malformed: {members_problem}"
        if mtype == SNAP_REQ and (members_problem := _members_problem(msg.get("members"))):
            return f"field 'members' is malformed: {members_problem}"
        return None

    def decode_request(self, mtype: str, raw: bytes) -> dict:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise RequestRefused(400, "invalid_request", f"{mtype} message is not valid JSON")
        problem = self.problem(msg, mtype)
        if problem is not None:
            raise RequestRefused(400, "invalid_request", f"malformed {mtype} message: {problem}")
        return msg

    def decode_reply(self, request: dict, raw: bytes) -> dict:
        """The peer's reply to `request`; raises ValueError when it is not a proper one."""
        msg = orjson.loads(raw)  # JSONDecodeError is a ValueError
        problem = self.problem(msg, REPLY_TYPE[request["type"]], request["to"])
        if problem is None and msg["rid"] != request["rid"]:
            problem = f"it answers request {msg['rid']}, not {request['rid']}"
        if problem is None and msg.get("pre", False) != request.get("pre", False):
            problem = "a pre-vote answered as a vote or the reverse"
        if problem is not None:
            raise ValueError(f"malformed {msg.get('type') if type(msg) is dict else 'reply'}: {problem}")
        return msg

    @staticmethod
    def decode_snapshot(request: dict, raw: bytes) -> dict:
        """The state in an InstallSnapshot body: a snapshot file whose checksum holds and whose
        meta is the announced snapshot (a sender's disk can rot too; installing rotten state
        would give it a fresh, valid checksum here)."""
        try:
            meta, state = decode_snapshot(raw)
        except StorageError as exc:
            raise RequestRefused(400, "invalid_request", f"snapshot body is not a valid snapshot: {exc}")
        if ((meta["index"], meta["term"]) != (request["last_index"], request["last_term"])
                or any(type(state.get(part, {})) is not dict for part in ("tasks", "kv"))):
            raise RequestRefused(400, "invalid_request", "snapshot body is not the announced snapshot")
        return state


def _members_problem(members) -> str | None:
    """What is wrong with a configuration's member list (the core would refuse it), or None."""
    if type(members) is not list:
        return "not a list"
    try:
        normalize_members(members)
    except ValueError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ client side
class PeerClosed(OSError):
    """The peer closed a keep-alive connection."""


class PeerConnection:
    """One keep-alive HTTP/1.1 connection to a peer, spoken directly over a socket: one
    sendall per request and a minimal parser for the responses of our own peers (status line,
    Content-Length, Connection). Raft messages are on the path of every replicated write, and
    the leader's CPU is the cluster's bottleneck: a round trip costs 2.1 ms with requests,
    0.56 ms with http.client (its header parsing goes through the email package) and 0.33 ms
    with this, which raised 3-node write throughput at 16 clients by about 10%."""

    def __init__(self, url: str, tls=None):
        parts = urlsplit(url)
        self.host, self.port, self.prefix = parts.hostname, parts.port or 80, parts.path.rstrip("/")
        self.tls = tls if parts.scheme == "https" else None  # a tls.NodeTLS
        self.sock: socket.socket | None = None
        self.buf = b""
        self.deadline = 0.0

    def post(self, path: str, body: bytes, headers: dict, connect_timeout: float, timeout: float):
        """Returns (status, body) within `timeout` seconds in all, or raises OSError
        (socket.timeout included) or ValueError (a malformed or oversized response)."""
        self.deadline = time.monotonic() + timeout
        lines = [f"POST {self.prefix}{path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        for k, v in headers.items():
            if "\r" in v or "\n" in v:
                raise ValueError(f"invalid value for header {k}")
            lines.append(f"{k}: {v}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reused = self.sock is not None
        try:
            return self._exchange(head, body, connect_timeout)
        except (PeerClosed, BrokenPipeError, ConnectionResetError):
            self.close()
            if not reused:
                raise
            # The peer had closed an idle keep-alive connection: once more, on a new one.
        except BaseException:
            self.close()
            raise
        try:
            return self._exchange(head, body, connect_timeout)
        except BaseException:
            self.close()
            raise

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the peer did not answer in time")
        return left

    def _exchange(self, head: bytes, body: bytes, connect_timeout: float) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock = socket.create_connection((self.host, self.port),
                                                 timeout=min(connect_timeout, self._remaining()))
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:  # the context of the moment: a reloaded certificate counts
                self.sock = self.tls.client_context.wrap_socket(self.sock, server_hostname=self.host)
            self.buf = b""
        self.sock.settimeout(self._remaining())  # sendall's timeout bounds the whole send
        if len(body) < 65536:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            self.sock.settimeout(self._remaining())
            self.sock.sendall(body)
        return self._response()

    def _recv(self) -> None:
        self.sock.settimeout(self._remaining())
        chunk = self.sock.recv(262144)
        if not chunk:
            raise PeerClosed("connection closed by the peer")
        self.buf += chunk

    def _response(self) -> tuple[int, bytes]:
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > MAX_RESPONSE_HEAD:
                raise ValueError("response head too large")
            self._recv()
        head, self.buf = self.buf[:end], self.buf[end + 4:]
        lines = head.split(b"\r\n")
        version, status = lines[0].split(None, 2)[:2]
        length, close = None, version != b"HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
                if length < 0:
                    raise ValueError("negative Content-Length")
                if length > MAX_PEER_MESSAGE:
                    raise ValueError(f"response body of {length} bytes is over the cap")
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise ValueError("chunked responses are not expected from a peer")
        if length is None:  # the body runs to the end of the connection
            try:
                while len(self.buf) <= MAX_PEER_MESSAGE:
                    self._recv()
                raise ValueError("response body without a length runs over the cap")
            except PeerClosed:
                pass
            length, close = len(self.buf), True
        while len(self.buf) < length:
            self._recv()
        data, self.buf = self.buf[:length], self.buf[length:]
        if close:
            self.close()
        return int(status), data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.buf = b""


class PeerSender(threading.Thread):
    """Sends raft messages to one peer over a keep-alive connection; replies go to the node.
    Every message the peer refuses or answers with something unusable is counted and logged."""

    def __init__(self, transport: "Transport", peer: str, url: str):
        super().__init__(daemon=True, name=f"sender-{peer}")
        self.transport, self.peer, self.url = transport, peer, url
        self.connection = PeerConnection(url, transport.tls)
        self.cond = threading.Condition()
        self.pending: list[dict] = []
        self.refused = 0  # answered, but not with a usable 200 reply
        self.failed = 0  # no answer: unreachable, timed out, connection broken
        self.retired = False  # the peer left the configuration: this thread ends

    def send(self, msg: dict) -> None:
        with self.cond:
            if msg["type"] in (APPEND_REQ, SNAP_REQ):
                # A newer append supersedes an unsent older one (it carries the same entries and more).
                self.pending = [m for m in self.pending if m["type"] not in (APPEND_REQ, SNAP_REQ)]
            self.pending.append(msg)
            self.cond.notify()

    def run(self) -> None:
        t = self.transport
        while not t.stopping.is_set():
            with self.cond:
                while not self.pending and not t.stopping.is_set() and not self.retired:
                    self.cond.wait(0.5)
                if t.stopping.is_set() or self.retired:
                    self.connection.close()
                    return
                msg = self.pending.pop(0)
            try:
                reply = self._exchange(msg)
            except Exception:  # never let one bad message end replication to this peer
                log.exception("unexpected error sending %s to %s", msg["type"], self.peer)
                self.connection.close()
                reply = None
            if reply is not None:
                t.on_message(reply)
            elif msg["type"] == SNAP_REQ:
                # The core waits long for a snapshot in flight (it can be big): report the failure,
                # after a pause so that an unreachable peer is not sent one snapshot after another.
                t.stopping.wait(t.retry_pause)
                t.on_snapshot_failed(self.peer)

    def _exchange(self, msg: dict) -> dict | None:
        """Send one message; returns the peer's checked reply, or None (counted and logged)."""
        t, limited = self.transport, self.transport.limited
        if msg["type"] == SNAP_REQ:
            try:
                meta, body = t.snapshot_source()
            except OSError as exc:
                limited.warning(("snapshot", self.peer), "cannot read the snapshot for %s: %s", self.peer, exc)
                return None
            msg = dict(msg, last_index=meta["index"], last_term=meta["term"],
                       members=meta.get("members", msg["members"]))
            headers = dict(t.headers)
            headers[MESSAGE_HEADER] = t.codec.encode(msg).decode("latin-1")
            path, timeout = "/raft/snapshot", SNAPSHOT_RETRY
        else:
            path = {VOTE_REQ: "/raft/vote", TIMEOUT_NOW: "/raft/timeout_now"}.get(
                msg["type"], "/replicate" if msg.get("entries") else "/heartbeat")
            headers, body, timeout = t.headers, t.codec.encode(msg), t.timeout
        try:
            status, content = self.connection.post(path, body, headers, t.timeout, timeout)
        except OSError as exc:
            self.failed += 1
            limited.warning(("unreachable", self.peer), "cannot reach peer %s (%s): %s",
                            self.peer, msg["type"], exc or type(exc).__name__)
            return None
        except ValueError as exc:
            self.refused += 1
            limited.warning(("response", self.peer), "peer %s sent an unusable response to %s: %s",
                            self.peer, msg["type"], exc)
            return None
        if status == 409 and b"cluster_mismatch" in content:
            self.refused += 1
            limited.warning(("mismatch", self.peer), "peer %s belongs to another cluster: %s",
                            self.peer, content[:300].decode("utf-8", "replace"))
            return None
        if status != 200:
            self.refused += 1
            limited.warning(("status", self.peer, status), "peer %s refused %s (%d bytes) with HTTP %d: %s",
                            self.peer, msg["type"], len(body), status, content[:300].decode("utf-8", "replace"))
            return None
        if msg["type"] == TIMEOUT_NOW:
            return None  # it has no reply
        try:
            return t.codec.decode_reply(msg, content)
        except ValueError as exc:
            self.refused += 1
            limited.warning(("reply", self.peer), "peer %s answered %s with an invalid reply (%s): %.300r",
                            self.peer, msg["type"], exc, content)
            return None


class Transport:
    """All node-to-node traffic of one node: the codec, one sender per peer, the secret, and the
    counts of refused messages in both directions."""

    def __init__(self, node_id: str, routes: dict[str, str], *, secret: str | None, tls=None,
                 election_timeout: float, heartbeat_interval: float, stopping: threading.Event,
                 on_message: Callable[[dict], None], on_snapshot_failed: Callable[[str], None],
                 snapshot_source: Callable[[], tuple[dict, bytes]], cluster_id: str | None = None):
        """`routes` maps each peer's id to the URL its traffic goes to (update_routes changes it)."""
        self.codec = Codec(node_id)
        self.tls = tls  # a tls.NodeTLS: https peers are called over (mutual) TLS
        self.stopping = stopping
        self.on_message, self.on_snapshot_failed = on_message, on_snapshot_failed
        self.snapshot_source = snapshot_source
        self.timeout = peer_timeout(election_timeout)
        self.retry_pause = max(2 * heartbeat_interval, election_timeout / 2)
        self.token = secret_token(secret).encode() if secret else None
        self.headers = {"Content-Type": JSON, PEER_HEADER: node_id}
        if self.token is not None:
            self.headers[SECRET_HEADER] = self.token.decode()
        if cluster_id is not None:
            self.set_cluster_id(cluster_id)
        self.limited = LimitedLog(log)
        self.senders: dict[str, PeerSender] = {}
        self.senders_lock = threading.Lock()
        self.started = False
        self.rejected = 0  # requests from the network that this node refused
        self.rejected_lock = threading.Lock()
        self.update_routes(routes)

    def set_cluster_id(self, cluster_id: str) -> None:
        self.headers = {**self.headers, CLUSTER_HEADER: cluster_id}  # replaced whole: senders read it unlocked

    def start(self) -> None:
        with self.senders_lock:
            self.started = True
            for sender in self.senders.values():
                sender.start()

    def update_routes(self, routes: dict[str, str]) -> None:
        """Make the senders follow the configuration: one per peer in `routes` (id -> URL); a
        peer whose URL changed gets a new one."""
        with self.senders_lock:
            for peer, sender in list(self.senders.items()):
                if routes.get(peer) != sender.url:
                    with sender.cond:
                        sender.retired = True
                        sender.cond.notify()
                    del self.senders[peer]
            for peer, url in routes.items():
                if peer not in self.senders:
                    sender = self.senders[peer] = PeerSender(self, peer, url)
                    if self.started:
                        sender.start()

    def receive_timeout(self, mtype: str) -> float:
        """How long the receiving side may take to answer: half of what the sender waits, so the
        answer (a 503 at worst) still reaches a sender that is waiting for it."""
        return (SNAPSHOT_RETRY if mtype == SNAP_REQ else self.timeout) / 2

    def send(self, msg: dict) -> None:
        sender = self.senders.get(msg["to"])
        if sender is not None:  # None: the peer left the configuration meanwhile
            sender.send(msg)

    def wake(self) -> None:
        """Wake the idle senders, e.g. to see that the node is stopping."""
        for sender in list(self.senders.values()):
            with sender.cond:
                sender.cond.notify()

    def join(self, timeout: float) -> None:
        for sender in list(self.senders.values()):
            if sender.is_alive():
                sender.join(timeout)

    def stats(self) -> dict:
        senders = dict(self.senders)
        return {"refused": {p: s.refused for p, s in senders.items()},
                "failed": {p: s.failed for p, s in senders.items()},
                "rejected": self.rejected}

    def check_request(self, environ) -> None:
        """Refuse a request that lacks the secret or that a browser could have sent."""
        if self.token is not None:
            given = environ.get(SECRET_ENVIRON)
            if given is None:
                raise RequestRefused(401, "unauthorized", "missing cluster secret")
            if not hmac.compare_digest(given.encode("latin-1", "replace"), self.token):
                raise RequestRefused(403, "forbidden", "wrong cluster secret")
        if any(key in environ for key in BROWSER_ENVIRON):
            raise RequestRefused(403, "forbidden", "node-to-node endpoints refuse browser requests "
                                 "(Origin or Sec-Fetch-* header present)")
        if environ.get("CONTENT_TYPE") != JSON or PEER_ENVIRON not in environ:
            raise RequestRefused(403, "forbidden", f"node-to-node requests must have Content-Type: {JSON} "
                                 f"and an {PEER_HEADER} header")

    def rejected_request(self, environ, exc: RequestRefused) -> None:
        with self.rejected_lock:
            self.rejected += 1
        self.limited.warning(("rejected", exc.status), "refused %s %s from %s with HTTP %d: %s",
                             environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                             environ.get("REMOTE_ADDR"), exc.status, exc.message)


# ------------------------------------------------------------------ server side
def read_body(environ, limit: int) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise RequestRefused(400, "invalid_request", "invalid Content-Length")
    if length > limit:
        raise RequestRefused(413, "request_entity_too_large", f"request body over {limit} bytes")
    return environ["wsgi.input"].read(length) if length > 0 else b""


def raft_rpc(node, flask_app):
    """WSGI app for the node-to-node endpoints (POST to RAFT_PATHS); everything else goes to
    `flask_app`. `node` gives `transport`, `check_cluster(cluster_id, mtype)` (raises
    RequestRefused 409 for another cluster's message) and `deliver(msg, snapshot_state=None)`,
    which returns the reply or raises RequestRefused. Raft traffic is on the path of every replicated write,
    and Flask's request handling costs about 0.9 ms a call here, more than all the rest of a
    call, so it is skipped."""
    transport, codec = node.transport, node.transport.codec
    client_api = flask_app.wsgi_app
    client_paths = {rule.rule for rule in flask_app.url_map.iter_rules()}  # e.g. GET /heartbeat

    def answer(mtype: str, environ) -> dict:
        transport.check_request(environ)
        if mtype != SNAP_REQ:
            msg = codec.decode_request(mtype, read_body(environ, MAX_PEER_MESSAGE))
            node.check_cluster(environ.get(CLUSTER_ENVIRON), mtype)
            return node.deliver(msg)
        # A snapshot is the raw pickledb file; its message travels in a header.
        msg = codec.decode_request(mtype, environ.get(MESSAGE_ENVIRON, "").encode("latin-1", "replace"))
        node.check_cluster(environ.get(CLUSTER_ENVIRON), mtype)
        state = codec.decode_snapshot(msg, read_body(environ, MAX_SNAPSHOT_BODY))
        return node.deliver(msg, snapshot_state=state)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        mtype = RAFT_RPC.get(path)
        posted = environ.get("REQUEST_METHOD") == "POST"
        if mtype is None or (not posted and path in client_paths):
            return client_api(environ, start_response)
        status, headers = 200, [("Content-Type", JSON)]
        try:
            if not posted:
                headers.append(("Allow", "POST"))
                raise RequestRefused(405, "method_not_allowed", f"{path} accepts only POST")
            body = codec.encode(answer(mtype, environ))
        except RequestRefused as exc:
            transport.rejected_request(environ, exc)
            status, body = exc.status, orjson.dumps({"error": exc.code, "message": exc.message})
            if exc.retry_after:
                headers.append(("Retry-After", str(int(max(1, exc.retry_after)))))
        except Exception:
            log.exception("unhandled error in %s", path)
            status = 500
            body = orjson.dumps({"error": "internal_error", "message": "the node hit an unexpected error"})
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    return app
