"""The in-test TCP proxy against a tiny local HTTP server (no PickleDB node needed)."""
import http.client
import http.server
import socket
import threading
import time

import pytest

from .proxy import ProxyNet


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        self._answer(b"hello")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(n)
        self.server.received.append(body)
        self._answer(b"got " + body)

    def _answer(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def servers():
    out = []
    for _ in range(2):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        srv.daemon_threads = True
        srv.received = []
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        out.append(srv)
    yield out
    for srv in out:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def net(servers):
    n = ProxyNet(seed=1)
    a, b = servers
    n.add_link("A", "B", b.server_address[1])
    n.add_link("B", "A", a.server_address[1])
    yield n
    n.close()


def _req(port, method="GET", body=None, timeout=1.0, conn=None):
    c = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, "/x", body=body)
    r = c.getresponse()
    return r.status, r.read(), c


def test_passthrough_and_keepalive(net, servers):
    port = net.links[("A", "B")].port
    st, body, c = _req(port)
    assert (st, body) == (200, b"hello")
    st, body, _ = _req(port, "POST", b"x1", conn=c)       # same connection
    assert body == b"got x1"
    c.close()
    assert net.routes_for("A") == {"B": f"http://127.0.0.1:{port}"}


def test_blocked_link_black_holes_then_heals(net, servers):
    port = net.links[("A", "B")].port
    st, _, c = _req(port)
    net.block("A", "B")
    with pytest.raises((socket.timeout, TimeoutError)):
        _req(port, conn=c, timeout=0.5)           # existing connection: black hole
    c.close()
    with pytest.raises((socket.timeout, TimeoutError)):
        _req(port, timeout=0.5)                   # new connection: black hole too
    # one-way: the other direction is unaffected
    assert _req(net.links[("B", "A")].port)[0] == 200
    net.heal()
    assert _req(port)[0] == 200


def test_drop_resp_delivers_requests_but_loses_answers(net, servers):
    port = net.links[("A", "B")].port
    net.set_link("A", "B", drop_resp=True)
    with pytest.raises((socket.timeout, TimeoutError)):
        _req(port, "POST", b"applied", timeout=0.5)
    assert servers[1].received == [b"applied"]
    net.heal()
    assert _req(port, "POST", b"again")[1] == b"got again"


def test_delay(net):
    port = net.links[("A", "B")].port
    net.set_link("A", "B", delay=0.3)
    t = time.monotonic()
    assert _req(port, timeout=3)[0] == 200
    assert time.monotonic() - t >= 0.55          # request and answer both delayed
    net.heal()
    t = time.monotonic()
    assert _req(port)[0] == 200
    assert time.monotonic() - t < 0.3


def test_drop_prob_resets_connections(net):
    port = net.links[("A", "B")].port
    net.set_link("A", "B", drop_prob=1.0)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        _req(port)
    assert net.links[("A", "B")].stats["resets"] >= 1


def test_partition_groups(net):
    net.partition([["A"], ["B"]])
    assert net.states() == {("A", "B"): "blocked", ("B", "A"): "blocked"}
    net.partition([["A", "B"]])
    assert set(net.states().values()) == {"ok"}


def test_target_down_closes_connection(net, servers):
    link = net.add_link("A", "C", _unused_port())
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        _req(link.port)


def test_connection_limit(servers):
    n = ProxyNet(seed=2, max_conns=2)
    try:
        link = n.add_link("A", "B", servers[1].server_address[1])
        n.block("A", "B")
        held = [socket.create_connection(("127.0.0.1", link.port)) for _ in range(2)]
        deadline = time.monotonic() + 5
        while len(link.conns) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = socket.create_connection(("127.0.0.1", link.port))
        extra.settimeout(2)
        try:
            assert extra.recv(10) == b""       # refused: closed at once ...
        except ConnectionResetError:
            pass                               # ... or reset
        for s in held + [extra]:
            s.close()
    finally:
        n.close()


def _unused_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p
