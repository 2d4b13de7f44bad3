"""The hostile-request catalogue, its raw-socket client and its oracle, against a local
socket server that records what arrives. No node process."""
import socket
import threading

import pytest

from .hostile import (KNOWN_503, MARK, QUICK, SLOW, Answer, Probe, check_hostile_data,
                      documented_503_codes, judge, make_probe, send, slow_probe)

DOC = set(KNOWN_503)


class Recorder:
    """Accepts connections, records the bytes of each request until the client stops
    sending, and answers with ``reply``."""

    def __init__(self, reply: bytes):
        self.reply = reply
        self.requests: list = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(0.3)
                data = b""
                try:
                    while True:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                except socket.timeout:
                    pass
                self.requests.append(data)
                conn.sendall(self.reply)

    def close(self):
        self.sock.close()


@pytest.fixture
def recorder():
    r = Recorder(b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 39\r\nConnection: close\r\n\r\n"
                 b'{"error": "x", "message": "refused it"}')
    yield r
    r.close()


def test_send_writes_what_the_probe_says(recorder):
    a = send(recorder.url, Probe("p", "refuse", "POST", "/set", [("Content-Type", "text/plain")],
                                 b"abcdef", chunked=True, timeout=5))
    assert a.status == 400 and a.json() == {"error": "x", "message": "refused it"}
    head, _, body = recorder.requests[-1].partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /set HTTP/1.1" and "Transfer-Encoding: chunked" in lines
    assert f"Host: {recorder.url[7:]}" in lines and "Content-Type: text/plain" in lines
    assert body == b"6\r\nabcdef\r\n0\r\n\r\n"
    send(recorder.url, Probe("p", "refuse", "POST", "/set", [("Host", "evil.example")], b"x",
                             declared_length=200_000_000, timeout=5))
    head, _, body = recorder.requests[-1].partition(b"\r\n\r\n")
    assert b"Content-Length: 200000000" in head and b"Host: evil.example" in head
    assert body == b"" and head.count(b"Host:") == 1
    send(recorder.url, Probe("p", "refuse", raw=b"NOT HTTP\r\n\r\n", timeout=5))
    assert recorder.requests[-1] == b"NOT HTTP\r\n\r\n"


def test_send_distinguishes_unsent_from_unanswered():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    assert not send(f"http://127.0.0.1:{port}", Probe("p", "any", timeout=1)).sent
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        a = send(f"http://127.0.0.1:{silent.getsockname()[1]}", Probe("p", "any", timeout=0.5))
        assert a.sent and a.status is None and a.error == "timeout"
    finally:
        silent.close()


def _answer(status, body=b"", ctype="application/json"):
    return Answer(True, status, {"content-type": ctype}, body)


ERR = b'{"error": "invalid_request", "message": "no"}'


@pytest.mark.parametrize("expect,method,answer,problem", [
    ("refuse", "POST", _answer(200, b"{}"), "must be refused"),
    ("refuse", "POST", _answer(415, ERR), None),
    ("refuse", "POST", _answer(400, b"Bad Request", "text/plain"), "without the JSON error"),
    ("refuse", "POST", _answer(413, b'{"error": "x"}'), "without the JSON error"),
    ("may_accept", "POST", _answer(200, b"{}"), None),
    ("may_accept", "POST", _answer(500, ERR), "other than a documented 503"),
    ("may_accept", "POST", _answer(503, b'{"error": "no_leader", "message": "m"}'), None),
    ("may_accept", "POST", _answer(503, b'{"error": "too_many_streams", "message": "m"}'),
     "other than a documented 503"),
    ("any", "HEAD", _answer(503), None),
    ("any", "HEAD", _answer(405), None),
    ("any", "GET", _answer(302, b""), None),
    ("may_accept", "GET", _answer(302, b""), "answered 302"),
    ("any", "GET", Answer(True, error="timeout"), "no answer"),
    ("any", "GET", Answer(False, error="connect"), None),
])
def test_judge(expect, method, answer, problem):
    got = judge(Probe("p", expect, method), answer, DOC)
    assert (got is None) if problem is None else (problem in got), got


def test_a_slow_client_may_be_cut_off():
    assert judge(slow_probe("slow_status", "1", 1.0), Answer(True, error="reset"), DOC) is None


def test_readme_error_table_is_parsed(tmp_path):
    assert set(KNOWN_503) <= documented_503_codes()
    readme = tmp_path / "README.md"
    readme.write_text("| 503 | `busy` / `too_many_streams` | overloaded, `x` |\n"
                      "| 503 | `no_leader` | x |\n| 404 | `not_found` | x |\n")
    assert documented_503_codes(readme) == {"busy", "too_many_streams", "no_leader"}


def test_every_probe_carries_the_mark():
    follower = {"role": "follower", "leader": "http://l", "term": 3, "last_log_index": 9,
                "commit_index": 8}
    for name in QUICK:
        p = make_probe(name, "t1", "a" * 32, follower)
        assert p is not None and p.expect in ("refuse", "may_accept", "any"), name
        if p.method in ("POST", "PUT") and p.raw is None and p.declared_length is None:
            assert MARK.encode() in p.body, name
        if p.record:
            assert MARK in str(p.record[1] or p.record[2]), name
    assert make_probe("put_id_query", "t", None) is None
    assert make_probe("cross_origin_replicate", "t", "a" * 32, dict(follower, role="leader")) is None
    for name in SLOW:
        assert slow_probe(name, "t", 2.0).slow == 2.0


def test_hostile_data_is_allowed_only_from_accepted_probes():
    jobs = {"k0": "v", f"{MARK}-1-bom_set": "x", f"{MARK}-2-text_plain_set": "y"}
    tasks = [{"id": "a", "title": "t", "description": f"{MARK}-3-put_id_query"}]
    problems = check_hostile_data({"n1": (jobs, tasks)}, {f"{MARK}-1-bom_set"})
    assert len(problems) == 2
    assert any("text_plain_set" in p for p in problems)
    assert any("put_id_query" in p for p in problems)
