"""The node-to-node HTTP connection against a real loopback server that closes idle keep-alive
connections, as waitress does after its channel timeout."""
import socket
import threading

import pytest

from cluster_manager import PeerConnection


def one_request_per_connection_server():
    """Answers one request per connection, then closes it without saying so in the response."""
    srv = socket.create_server(("127.0.0.1", 0))
    served = []

    def run():
        while True:
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
                served.append(body)
                reply = b'{"ok": true}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(reply), reply))
    threading.Thread(target=run, daemon=True).start()
    return srv, served


def test_a_closed_keep_alive_connection_is_replaced_once():
    srv, served = one_request_per_connection_server()
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        for i in range(3):
            status, body = conn.post("/replicate", b'{"n": %d}' % i, {"Content-Type": "application/json"}, 1, 2)
            assert (status, body) == (200, b'{"ok": true}')
        assert served == [b'{"n": 0}', b'{"n": 1}', b'{"n": 2}']
    finally:
        conn.close()
        srv.close()


def test_a_peer_that_is_down_raises_and_leaves_no_half_open_connection():
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    conn = PeerConnection(f"http://127.0.0.1:{port}")
    for _ in range(2):
        with pytest.raises(OSError):
            conn.post("/heartbeat", b"{}", {}, 1, 1)
        assert conn.conn is None
