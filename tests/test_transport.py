"""The node-to-node HTTP connection (transport.PeerConnection) against real loopback
servers: waitress, as the nodes run it, and raw socket servers that misbehave on purpose."""
import socket
import threading

import pytest
from waitress import create_server

from transport import PeerConnection


def raw_server(responses):
    """Serves one connection per item of `responses`: reads one request, sends the given bytes,
    then closes the connection (without saying so unless the response does)."""
    srv = socket.create_server(("127.0.0.1", 0))
    received = []

    def run():
        for reply in responses:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int([ln.split(b":")[1] for ln in head.split(b"\r\n")
                              if ln.lower().startswith(b"content-length")][0])
                while len(body) < length:
                    body += conn.recv(65536)
                received.append((head.split(b"\r\n")[0], body))
                conn.sendall(reply)
    threading.Thread(target=run, daemon=True).start()
    return srv, received


def ok(body=b'{"ok": true}', extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s" % (
        extra, len(body), body)


def test_keep_alive_against_waitress_with_large_bodies():
    def echo(environ, start_response):
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    server = create_server(echo, host="127.0.0.1", port=0, threads=2)
    threading.Thread(target=server.run, daemon=True).start()
    conn = PeerConnection(f"http://127.0.0.1:{server.effective_port}")
    try:
        sock = None
        for size in (0, 10, 70_000, 3_000_000):  # small, and larger than one recv
            payload = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            assert conn.post("/echo", payload, {"X-Test": "1"}, 1, 5) == (200, payload)
            sock = sock or conn.sock
            assert conn.sock is sock  # one connection for every call
    finally:
        conn.close()
        server.close()


def test_a_closed_keep_alive_connection_is_replaced_once():
    srv, received = raw_server([ok(), ok(), ok()])
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        for i in range(3):
            assert conn.post("/replicate", b'{"n": %d}' % i, {}, 1, 2) == (200, b'{"ok": true}')
        assert [body for _, body in received] == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
        assert received[0][0] == b"POST /replicate HTTP/1.1"
    finally:
        conn.close()
        srv.close()


def test_connection_close_and_bodies_without_length():
    srv, _ = raw_server([ok(extra=b"Connection: close\r\n"),
                         b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy"])
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        assert conn.post("/a", b"{}", {}, 1, 2) == (200, b'{"ok": true}') and conn.sock is None
        assert conn.post("/b", b"{}", {}, 1, 2) == (503, b"busy") and conn.sock is None
    finally:
        srv.close()


@pytest.mark.parametrize("reply", [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n",
    b"HTTP/1.1 OK\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X-Junk: " + b"a" * 70_000,
])
def test_malformed_responses_raise_and_drop_the_connection(reply):
    srv, _ = raw_server([reply])
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        with pytest.raises(ValueError):
            conn.post("/a", b"{}", {}, 1, 2)
        assert conn.sock is None
    finally:
        srv.close()


def test_header_injection_is_refused():
    conn = PeerConnection("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        conn.post("/a", b"{}", {"X-Cluster-Secret": "s\r\nX-Evil: 1"}, 1, 1)


def test_a_peer_that_is_down_raises_and_leaves_no_half_open_connection():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    conn = PeerConnection(f"http://127.0.0.1:{port}")
    for _ in range(2):
        with pytest.raises(OSError):
            conn.post("/heartbeat", b"{}", {}, 1, 1)
        assert conn.sock is None


def test_a_silent_peer_times_out():
    srv = socket.create_server(("127.0.0.1", 0))  # accepts (backlog) but never answers
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        with pytest.raises(OSError):  # socket.timeout
            conn.post("/a", b"{}", {}, 1, 0.2)
        assert conn.sock is None
    finally:
        srv.close()
