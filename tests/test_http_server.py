"""http_server.HTTPServer: the node's web server. Real sockets throughout: first against the
server in this process with a small WSGI app (tight limits, so deadlines take a second), then
against real node processes (body caps, JSON errors, SIGTERM, and a 3-node cluster under a
slow-client attack)."""
import json
import logging
import os
import select
import signal
import socket
import statistics
import threading
import time

import pytest
import requests

from harness import Cluster, wait_for
from http_server import HTTPServer, Limits
from transport import secret_token

MiB = 1024 * 1024
PEER_ROUTES = {"/replicate": 2 * MiB, "/raft/snapshot": 8 * MiB}


# ------------------------------------------------------------------ raw HTTP
def read_response(sock: socket.socket, timeout: float = 5) -> tuple[int, dict, bytes]:
    """One response from `sock` (status, lower-cased headers, body by Content-Length)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def exchange(port: int, data: bytes, timeout: float = 5) -> tuple[int, dict, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def assert_json_error(response, status: int, code: str) -> dict:
    got_status, headers, body = response
    assert got_status == status, (got_status, body)
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["error"] == code and isinstance(doc["message"], str) and doc["message"], doc
    return doc


def post_head(path: str, length: int | None = None, extra: str = "") -> bytes:
    framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{framing}\r\n{extra}\r\n".encode()


def upload_until_answered(port: int, head: bytes, chunk: bytes, limit: int, timeout: float = 10):
    """Send `head`, then `chunk` after `chunk` until the server answers or `limit` bytes are
    sent. Returns (bytes of body sent when the answer arrived, the response)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        sock.sendall(head)
        sent, deadline = 0, time.monotonic() + timeout
        sock.setblocking(False)
        while sent < limit and time.monotonic() < deadline:
            readable, writable, _ = select.select([sock], [sock], [], 0.5)
            if readable:
                break
            if writable:
                try:
                    sent += sock.send(chunk)
                except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                    break
        sock.setblocking(True)
        return sent, read_response(sock, timeout)
    finally:
        sock.close()


# ------------------------------------------------------------------ in-process server
class App:
    """/block waits for `gate`; /stream yields until the server stops; /crash fails inside the
    server (a hop-by-hop header); /big answers `big` MiB; anything else echoes its body size."""

    def __init__(self):
        self.gate = threading.Event()
        self.stopped = threading.Event()
        self.big = 0

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/block":
            self.gate.wait(20)
        if path == "/crash":
            start_response("200 OK", [("Connection", "close")])  # waitress refuses: a 500 of its own
        if path == "/stream":
            start_response("200 OK", [("Content-Type", "text/event-stream")])
            return self.stream()
        if path == "/big":
            start_response("200 OK", [("Content-Length", str(self.big * MiB))])
            return (b"x" * MiB for _ in range(self.big))
        body = environ["wsgi.input"].read()
        data = json.dumps({"path": path, "bytes": len(body)}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    def stream(self):
        yield b"data: hello\n\n"
        while not self.stopped.wait(0.05):
            yield b": keep-alive\n\n"


@pytest.fixture
def serve():
    """serve(**limits) -> (server, app), running in a thread; stopped at the end."""
    running = []

    def start(peer_auth=None, **limits):
        app = App()
        server = HTTPServer(app, "127.0.0.1", 0, PEER_ROUTES, limits=Limits(**limits), peer_auth=peer_auth,
                            on_stop=app.stopped.set)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        server.thread = thread
        running.append((server, thread, app))
        return server, app
    yield start
    for server, thread, app in running:
        app.gate.set()
        server.stop()
        thread.join(5)
        assert not thread.is_alive()


def test_peer_requests_are_served_while_every_client_thread_is_blocked(serve):
    server, app = serve(client_threads=4, peer_threads=2)
    blocked = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(6)]  # 4 run, 2 queue
    try:
        for s in blocked:
            s.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
            client.settimeout(0.5)
            with pytest.raises(socket.timeout):  # the premise: no client thread is free
                client.recv(1)
            started = time.monotonic()
            status, _, body = exchange(server.port, post_head("/replicate", 2) + b"{}")
            assert status == 200 and json.loads(body) == {"path": "/replicate", "bytes": 2}
            assert time.monotonic() - started < 0.5
            app.gate.set()
            assert read_response(client)[0] == 200
        for s in blocked:
            assert read_response(s)[0] == 200
    finally:
        for s in blocked:
            s.close()


def test_with_a_secret_only_authenticated_requests_are_node_to_node(serve):
    server, app = serve(client_threads=1, peer_auth=lambda headers: headers.get("X_CLUSTER_SECRET") == "s3cret")
    port = server.port
    signed = "X-Cluster-Secret: s3cret\r\n"
    # Unauthenticated, a peer path gets the client cap: its 2 MiB body is refused unread.
    assert_json_error(exchange(port, post_head("/replicate", 2 * MiB)), 413, "request_entity_too_large")
    assert exchange(port, post_head("/replicate", 2 * MiB, signed) + b"x" * (2 * MiB))[0] == 200
    # ... and it waits for a client thread like any client request, while a peer's does not.
    with socket.create_connection(("127.0.0.1", port)) as blocked, \
            socket.create_connection(("127.0.0.1", port)) as forged:
        blocked.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: server.client_pool.active_count == 1, 5, "the client thread to block")
        forged.sendall(post_head("/replicate", 2) + b"{}")
        assert exchange(port, post_head("/replicate", 2, signed) + b"{}")[0] == 200
        forged.settimeout(0.3)
        with pytest.raises(socket.timeout):
            forged.recv(1)
        app.gate.set()
        assert read_response(forged)[0] == 200


def test_a_head_sent_one_line_at_a_time_is_cut_off_at_the_head_deadline(serve):
    server, _ = serve(head_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /other HTTP/1.1\r\n")
        started = time.monotonic()
        sock.setblocking(False)
        lines = 0
        while not select.select([sock], [], [], 0.2)[0]:  # one header line every 0.2 s
            sock.send(b"X-Slow-%d: yes\r\n" % lines)
            lines += 1
            assert time.monotonic() - started < 4, "never cut off"
        sock.setblocking(True)
        doc = assert_json_error(read_response(sock), 408, "request_timeout")
        assert "head" in doc["message"]
        assert lines >= 4  # it was active all along: an inactivity timeout would not have fired
        assert sock.recv(1) == b""


def test_a_body_slower_than_the_minimum_rate_is_cut_off(serve):
    server, _ = serve(body_timeout=0.5, min_body_rate=1000)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(post_head("/tasks", 100_000))
        started = time.monotonic()
        sock.setblocking(False)
        while not select.select([sock], [], [], 0.1)[0]:  # 10 bytes every 0.1 s: 100 bytes/s
            sock.send(b"0123456789")
            assert time.monotonic() - started < 4, "never cut off"
        sock.setblocking(True)
        assert_json_error(read_response(sock), 408, "request_timeout")


def test_a_tls_handshake_on_the_plain_port_is_answered_at_once(serve):
    server, _ = serve()
    started = time.monotonic()
    hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"  # the start of a ClientHello, no line end
    doc = assert_json_error(exchange(server.port, hello), 400, "bad_request")
    assert "http://" in doc["message"] and time.monotonic() - started < 1  # not at the head deadline
    with pytest.raises(requests.exceptions.SSLError, match="(?i)wrong.version.number"):
        requests.get(f"https://127.0.0.1:{server.port}/", timeout=5)


def test_a_connection_that_never_sends_a_request_is_closed(serve):
    server, _ = serve(head_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(4)
        assert sock.recv(1) == b""


def test_a_client_that_does_not_read_its_answer_releases_the_thread(serve):
    server, app = serve(client_threads=1, send_timeout=1)
    app.big = 64  # MiB: more than waitress buffers (16 MiB) plus the kernel's buffers
    with socket.create_connection(("127.0.0.1", server.port)) as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        # The only client thread is stuck writing; it is freed once the stalled client is dropped.
        status, _, body = exchange(server.port, b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n", timeout=6)
        assert status == 200 and json.loads(body)["path"] == "/next"


def test_an_answer_to_a_request_that_queued_longer_than_send_timeout_is_sent(serve):
    """The send clock starts when the answer is queued, not when the request arrived (one CI run
    lost an answer this way: its request had waited behind a stalled client)."""
    server, app = serve(send_timeout=1)
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        wait_for(lambda: len(server.channels()) == 1, 5, "the connection to be accepted")
        channel = server.channels()[0]
        channel.last_activity = time.time() - 5  # as after waiting 5 s in the queue for a worker
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        channel.write_soon(answer)  # what a worker does; then the I/O thread's deadline check
        channel.check_deadlines(time.monotonic(), time.time())
        sock.settimeout(5)
        assert sock.recv(1024) == answer


def test_a_flood_of_waiting_clients_evicts_the_longest_waiting_never_peers_or_running_requests(serve):
    server, app = serve(client_connections=20, client_threads=4)
    port = server.port
    peer = socket.create_connection(("127.0.0.1", port))
    running = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
    flood: list[socket.socket] = []
    try:
        peer.sendall(post_head("/replicate", 2) + b"{}")
        assert read_response(peer)[0] == 200  # a verified peer from now on
        for s in running:
            s.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        for i in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /other HTTP/1.1\r\nX-Partial: %d\r\n" % i)  # a head that never ends
            flood.append(s)
        # A new client and a new peer connection are both let in; the oldest waiters made room.
        assert exchange(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200
        assert exchange(port, post_head("/replicate", 2) + b"{}")[0] == 200
        wait_for(lambda: sum(c.counts_as_client() for c in server.channels()) <= 20, 5,
                 "client connections back within the limit")
        evicted = []
        for s in flood[:20]:  # the first ones waited longest
            s.settimeout(5)
            evicted.append(read_response(s))
        for response in evicted:
            assert_json_error(response, 503, "too_many_connections")
        peer.sendall(post_head("/replicate", 2) + b"{}")  # the peer's connection is still open
        assert read_response(peer)[0] == 200
        app.gate.set()
        for s in running:  # requests being served were never evicted
            assert read_response(s)[0] == 200
    finally:
        for s in [peer, *running, *flood]:
            s.close()


def test_when_every_client_connection_is_busy_a_new_one_is_kept_only_for_a_peer(serve):
    server, app = serve(client_connections=4, client_threads=2)
    busy = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(4)]  # 2 run, 2 queue
    try:
        for s in busy:
            s.sendall(b"GET /block HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: sum(bool(c.requests) for c in server.channels()) == 4, 5, "four busy connections")
        doc = assert_json_error(exchange(server.port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n"),
                                503, "too_many_connections")
        assert "busy" in doc["message"]
        assert exchange(server.port, post_head("/replicate", 2) + b"{}")[0] == 200
        app.gate.set()
        for s in busy:
            assert read_response(s)[0] == 200
    finally:
        for s in busy:
            s.close()


def test_body_caps_by_path_refuse_a_declared_length_before_reading_the_body(serve):
    server, _ = serve(client_body=MiB)
    port = server.port
    # Exactly the cap is accepted; one byte more is refused from the head alone.
    assert exchange(port, post_head("/tasks", MiB) + b"x" * MiB)[0] == 200
    assert_json_error(exchange(port, post_head("/tasks", MiB + 1)), 413, "request_entity_too_large")
    # A node-to-node path has its own cap (above the client cap).
    status, _, body = exchange(port, post_head("/replicate", 2 * MiB) + b"x" * (2 * MiB))
    assert status == 200 and json.loads(body)["bytes"] == 2 * MiB
    assert_json_error(exchange(port, post_head("/replicate", 2 * MiB + 1)), 413, "request_entity_too_large")
    assert exchange(port, post_head("/raft/snapshot", 5 * MiB) + b"x" * (5 * MiB))[0] == 200
    # GET to a peer path is client traffic, with the client cap.
    assert_json_error(exchange(port, b"GET /replicate HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"),
                      413, "request_entity_too_large")
    # Expect: 100-continue is never answered with 100 for a body that will be refused.
    status, _, _ = exchange(port, post_head("/tasks", 5 * MiB, "Expect: 100-continue\r\n"))
    assert status == 413


def test_a_chunked_body_is_cut_at_the_cap(serve):
    server, _ = serve(client_body=MiB)
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    sent, response = upload_until_answered(server.port, post_head("/tasks"), chunk, 256 * MiB)
    assert_json_error(response, 413, "request_entity_too_large")
    assert sent < 64 * MiB, sent
    ok = exchange(server.port, post_head("/tasks") + b"4\r\n{}{}\r\n0\r\n\r\n")
    assert ok[0] == 200 and json.loads(ok[2])["bytes"] == 4


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET / HTTP/1.1\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n", 431, "request_header_fields_too_large"),
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400, "bad_request"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "not_implemented"),
    (b"GET /crash HTTP/1.1\r\n\r\n", 500, "internal_error"),
], ids=["431", "400-request-line", "400-content-length", "501", "500"])
def test_the_servers_own_answers_are_json_errors(serve, request_bytes, status, code):
    server, _ = serve()
    assert_json_error(exchange(server.port, request_bytes), status, code)


def test_stop_ends_open_streams_and_closes_every_connection(serve, caplog):
    server, app = serve()
    stream = socket.create_connection(("127.0.0.1", server.port))
    idle = socket.create_connection(("127.0.0.1", server.port))
    try:
        stream.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        stream.settimeout(5)
        received = b""
        while b"data: hello" not in received:
            received += stream.recv(65536)
        started = time.monotonic()
        with caplog.at_level(logging.WARNING):
            server.stop()
            server.thread.join(3)
        assert time.monotonic() - started < 1.5
        for s in (stream, idle):
            s.settimeout(2)
            while s.recv(65536):
                pass  # the end of the stream, then the close
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        stream.close()
        idle.close()


# ------------------------------------------------------------------ real node processes
@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """One single-node cluster, with its own TMPDIR to watch for spooled bodies."""
    root = tmp_path_factory.mktemp("node")
    tmp = root / "tmp"
    tmp.mkdir()
    with Cluster(root / "c", n=1, env={"TMPDIR": str(tmp)}) as cluster:
        cluster.wait_for_leader()
        n = cluster.node(0)
        n.tmpdir = str(tmp)
        yield n


def spooled_files(n) -> list[str]:
    """Files the node has open in its TMPDIR (temporary files are unlinked at once)."""
    fd_dir = f"/proc/{n.proc.pid}/fd"
    found = []
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith(n.tmpdir):
            found.append(target)
    return found


@pytest.mark.cluster
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_node_refuses_a_200_mb_body_without_reading_or_spooling_it(node, framing):
    port = node.port
    watching, seen = True, []

    def watch():
        while watching:
            seen.extend(spooled_files(node))
            time.sleep(0.01)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        if framing == "content-length":
            head, chunk = post_head("/tasks", 200 * MiB), b"x" * 0x10000
        else:
            head, chunk = post_head("/tasks"), b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        sent, response = upload_until_answered(port, head, chunk, 200 * MiB)
    finally:
        watching = False
        watcher.join()
    assert sent < 32 * MiB, f"the node read {sent} bytes before refusing"
    assert not seen, seen
    doc = assert_json_error(response, 413, "request_entity_too_large")
    assert "1048576" in doc["message"]
    r = requests.post(node.url + "/tasks", json={"title": "still serving"}, timeout=5)
    assert r.status_code == 201


@pytest.mark.cluster
@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET /tasks HTTP/1.1\r\nHost: x\r\nX-Big: " + b"x" * 300_000 + b"\r\n\r\n", 431,
     "request_header_fields_too_large"),
    (b"\x16\x03\x01 GARBAGE LINE\r\n\r\n", 400, "bad_request"),
    (b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n", 413, "request_entity_too_large"),
    (b"POST /replicate HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n", 413, "request_entity_too_large"),
], ids=["431", "400", "413-client", "413-peer"])
def test_a_node_answers_server_level_errors_as_json(node, request_bytes, status, code):
    assert_json_error(exchange(node.port, request_bytes), status, code)
    assert node.status() is not None


@pytest.mark.cluster
def test_sigterm_with_an_open_event_stream_stops_within_two_seconds_cleanly(tmp_path):
    with Cluster(tmp_path / "c", n=1) as cluster:
        cluster.wait_for_leader()
        n = cluster.node(0)
        with socket.create_connection(("127.0.0.1", n.port), timeout=5) as stream:
            stream.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{n.port}\r\n\r\n".encode())
            assert b"200 OK" in stream.recv(65536)
            started = time.monotonic()
            n.proc.send_signal(signal.SIGTERM)
            assert n.proc.wait(5) == 0
            assert time.monotonic() - started < 2
    log = open(n.log_path, encoding="utf-8", errors="replace").read()
    assert "Traceback" not in log and "Bad file descriptor" not in log, log


class SlowClients:
    """`count` connections to a node, each sending one more header line every `interval`
    seconds and never finishing its head. A closed one is reopened (an attacker would)."""

    def __init__(self, port: int, count: int, interval: float):
        self.port, self.count, self.interval = port, count, interval
        self.socks: list[socket.socket] = []
        self.stopping = threading.Event()
        self.reopened = 0
        for _ in range(count):
            self.socks.append(self.open())
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def open(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(b"POST /tasks HTTP/1.1\r\nHost: x\r\n")
        s.setblocking(False)
        return s

    def run(self) -> None:
        line = 0
        while not self.stopping.wait(self.interval / 10):
            for i in range(line % 10, len(self.socks), 10):  # a tenth of them at a time
                try:
                    self.socks[i].send(b"X-Slow-%d: yes\r\n" % line)
                    if self.socks[i].recv(1, socket.MSG_PEEK) == b"":
                        raise ConnectionError
                except BlockingIOError:
                    pass
                except OSError:
                    self.socks[i].close()
                    try:
                        self.socks[i] = self.open()
                        self.reopened += 1
                    except OSError:
                        pass
            line += 1

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        for s in self.socks:
            s.close()


@pytest.mark.cluster
def test_a_cluster_under_a_slow_client_attack_keeps_its_leader_commits_and_catches_up(tmp_path):
    with Cluster(tmp_path / "c", secret="s3cret") as cluster:
        leader = cluster.by_url(cluster.wait_for_leader())
        term = leader.status()["term"]
        followers = [n for n in cluster.nodes if n is not leader]
        streams: list[socket.socket] = []
        attack = None
        try:
            # Every event stream a node allows holds one of its client threads for 30 s.
            for n in cluster.nodes:
                for _ in range(100):  # a node allows far fewer streams
                    s = socket.create_connection(("127.0.0.1", n.port), timeout=5)
                    s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{n.port}\r\n\r\n".encode())
                    head = s.recv(65536)
                    streams.append(s)
                    if b" 503 " in head:
                        break
                    assert b" 200 " in head, head
                else:
                    raise AssertionError(f"{n.url} never refused an event stream")
            attack = SlowClients(leader.port, 520, interval=2.0)
            session = requests.Session()
            latencies = []
            for i in range(20):
                started = time.monotonic()
                r = session.post(leader.url + "/tasks", json={"title": f"under attack {i}"}, timeout=3)
                assert r.status_code == 201, r.text
                latencies.append(time.monotonic() - started)
            # A new node-to-node connection gets through the full server at once.
            sender, receiver = followers[0].status(timeout=2), leader.status(timeout=2)
            vote = {"type": "vote_req", "from": sender["node_id"], "to": receiver["node_id"], "term": 0,
                    "last_index": 0, "last_term": 0, "pre": True, "rid": 1}
            r = requests.post(leader.url + "/raft/vote", data=json.dumps(vote), timeout=2,
                              headers={"X-Cluster-Secret": secret_token("s3cret"), "X-PickleDB-Peer": sender["node_id"],
                                       "X-PickleDB-Cluster": receiver["cluster_id"],
                                       "Content-Type": "application/json"})
            assert r.status_code == 200, r.text
            # A follower restarted during the attack catches up.
            followers[0].stop()
            for i in range(20):
                r = session.post(leader.url + "/tasks", json={"title": f"while restarting {i}"}, timeout=3)
                assert r.status_code == 201, r.text
            followers[0].start()
            cluster.wait_converged(timeout=10)
            assert statistics.median(latencies) < 0.25 and max(latencies) < 2, latencies
            for n in cluster.nodes:
                view = n.status()
                assert view["term"] == term and view["leader"] == receiver["node_id"], view
            assert "client connections open (the limit)" in open(leader.log_path).read()  # it was full
        finally:
            if attack is not None:
                attack.close()
            for s in streams:
                s.close()
