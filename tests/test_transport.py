"""The node-to-node transport: its HTTP connection (transport.PeerConnection) against real
loopback servers (waitress, as the nodes run it, and raw socket servers that misbehave on
purpose), its message codec, and its rate-limited log."""
import logging
import socket
import threading
import time

import orjson
import pytest
from waitress import create_server

from transport import LOG_EVERY, MAX_PEER_MESSAGE, Codec, LimitedLog, PeerConnection, RequestRefused


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


def trickling_server(prefix: bytes, byte: bytes, interval: float, seconds: float):
    """Answers one request with `prefix`, then one `byte` every `interval` for `seconds`."""
    srv = socket.create_server(("127.0.0.1", 0))

    def run():
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(prefix)
            deadline = time.monotonic() + seconds
            try:
                while time.monotonic() < deadline:
                    conn.sendall(byte)
                    time.sleep(interval)
            except OSError:
                pass  # the client gave up
    threading.Thread(target=run, daemon=True).start()
    return srv


def test_the_timeout_is_a_deadline_for_the_whole_call():
    """A peer that keeps a response alive byte by byte cannot hold the sender past its timeout."""
    srv = trickling_server(b"HTTP/1.1 200 OK\r\n", b"X", 0.05, 4)
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        start = time.monotonic()
        with pytest.raises(socket.timeout):
            conn.post("/a", b"{}", {}, 1, 0.5)
        assert time.monotonic() - start < 1.5 and conn.sock is None
    finally:
        srv.close()


def test_a_body_without_length_is_read_only_up_to_the_cap():
    srv = trickling_server(b"HTTP/1.1 200 OK\r\n\r\n", b"y" * 65536, 0.001, 4)
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        with pytest.raises(ValueError, match="over the cap"):
            conn.post("/a", b"{}", {}, 1, 3)
        assert conn.sock is None
    finally:
        srv.close()


def test_a_declared_length_over_the_cap_is_refused_before_reading():
    srv, _ = raw_server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_PEER_MESSAGE + 1)])
    conn = PeerConnection(f"http://127.0.0.1:{srv.getsockname()[1]}")
    try:
        with pytest.raises(ValueError, match="over the cap"):
            conn.post("/a", b"{}", {}, 1, 2)
    finally:
        srv.close()


# ------------------------------------------------------------------ codec
ME, PEER = "127.0.0.1:1", "127.0.0.1:2"
CODEC = Codec(ME)
APPEND = {"type": "append_req", "from": PEER, "to": ME, "term": 3, "prev_index": 4, "prev_term": 2,
          "entries": [[3, {"op": "noop"}]], "commit": 4, "seq": 7, "rid": 9}


def refused(mtype, msg):
    with pytest.raises(RequestRefused) as info:
        CODEC.decode_request(mtype, orjson.dumps(msg) if not isinstance(msg, bytes) else msg)
    assert info.value.status == 400
    return info.value.message


def test_the_codec_accepts_well_formed_requests():
    assert CODEC.decode_request("append_req", orjson.dumps(APPEND)) == APPEND
    vote = {"type": "vote_req", "from": PEER, "to": ME, "term": 4, "last_index": 0, "last_term": 0,
            "rid": 1, "pre": True}
    assert CODEC.decode_request("vote_req", orjson.dumps(vote)) == vote


@pytest.mark.parametrize("change", [
    {"term": True}, {"term": -1}, {"term": 1.0}, {"term": "1"}, {"rid": None}, {"commit": None},
    {"entries": {}}, {"entries": [[1]]}, {"entries": [["1", {}]]}, {"entries": [[1, []]]},
    {"entries": [[-1, {}]]}, {"from": ME}, {"from": ""}, {"from": []}, {"from": {}}, {"to": PEER},
    {"entries": [[3, {"op": "config", "members": [{"id": "a", "url": "http://a:1", "role": "boss"}]}]]},
    {"entries": [[3, {"op": "config", "members": {}}]]},
    {"entries": [[3, {"op": "config", "members": [{"id": "a", "url": "http://a:1", "role": "voter"}] * 2}]]},
    {"to": None}, {"type": "vote_req"}, {"type": []},
    {"pre": 1},
])
def test_the_codec_refuses_malformed_requests(change):
    assert "malformed" in refused("append_req", {**APPEND, **change})


@pytest.mark.parametrize("members", [None, [{"id": "a"}]])
def test_an_append_from_the_start_of_the_log_carries_the_bootstrap_configuration(members):
    msg = {**APPEND, "prev_index": 0, "prev_term": 0}
    if members is not None:
        msg["members"] = members
    assert "members" in refused("append_req", msg)
    good = {**msg, "members": [{"id": PEER, "url": "http://127.0.0.1:2", "role": "voter"}]}
    assert CODEC.decode_request("append_req", orjson.dumps(good)) == good


def test_the_codec_accepts_a_leader_it_does_not_know_yet():
    """A joining node knows no members: the leader's requests are checked, not its sender's name."""
    msg = {**APPEND, "from": "10.0.0.9:4005",
           "entries": [[3, {"op": "config", "members": [{"id": ME, "url": "http://127.0.0.1:1", "role": "learner"}]}]]}
    assert CODEC.decode_request("append_req", orjson.dumps(msg)) == msg


@pytest.mark.parametrize("members", [None, {}, [{"id": "a"}]])
def test_the_codec_refuses_a_snapshot_without_a_proper_configuration(members):
    snap = {"type": "snap_req", "from": PEER, "to": ME, "term": 1, "last_index": 5, "last_term": 1,
            "seq": 0, "rid": 1, "members": members}
    assert "members" in refused("snap_req", snap)


@pytest.mark.parametrize("raw", [b"[]", b"null", b"1", b"garbage", b'"append_req"'])
def test_the_codec_refuses_requests_that_are_not_objects(raw):
    refused("append_req", raw)


REPLY = {"type": "append_resp", "from": PEER, "to": ME, "term": 3, "success": True, "match": 5,
         "hint": 0, "seq": 7, "rid": 9}


@pytest.mark.parametrize("raw", [
    b"[]", b"null", b"garbage", b"{}",
    orjson.dumps({**REPLY, "rid": 8}),  # the reply to another request
    orjson.dumps({**REPLY, "success": 1}),
    orjson.dumps({**REPLY, "match": None}),
    orjson.dumps({**REPLY, "from": "127.0.0.1:3"}),  # not the node asked
    orjson.dumps({**REPLY, "type": "vote_resp"}),
    orjson.dumps({**REPLY, "pre": True}),
])
def test_the_codec_refuses_replies_that_do_not_answer_the_request(raw):
    with pytest.raises(ValueError):
        CODEC.decode_reply(dict(APPEND, **{"from": ME, "to": PEER}), raw)


def test_the_codec_pairs_a_reply_with_its_request():
    request = dict(APPEND, **{"from": ME, "to": PEER})
    assert CODEC.decode_reply(request, orjson.dumps(REPLY)) == REPLY
    pre_vote = {"type": "vote_req", "from": ME, "to": PEER, "term": 4, "last_index": 0,
                "last_term": 0, "rid": 2, "pre": True}
    answer = {"type": "vote_resp", "from": PEER, "to": ME, "term": 4, "granted": True, "rid": 2, "pre": True}
    assert CODEC.decode_reply(pre_vote, orjson.dumps(answer)) == answer
    with pytest.raises(ValueError):  # a vote is not a pre-vote
        CODEC.decode_reply(pre_vote, orjson.dumps({**answer, "pre": False}))


def test_limited_log_holds_back_repeats_and_says_how_many(caplog):
    limited = LimitedLog(logging.getLogger("test.limited"))
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        for i in range(50):
            limited.warning("peer-a", "cannot reach %s", "a")
        limited.warning("peer-b", "cannot reach %s", "b")
    assert [r.getMessage() for r in caplog.records] == ["cannot reach a", "cannot reach b"]
    limited.last["peer-a"] -= LOG_EVERY  # as if LOG_EVERY seconds had passed
    with caplog.at_level(logging.WARNING, logger="test.limited"):
        limited.warning("peer-a", "cannot reach %s", "a")
    assert caplog.records[-1].getMessage().startswith("cannot reach a (49 more like this")
