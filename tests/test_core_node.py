"""The node runtime and its node-to-node endpoints, in process, over real loopback HTTP: forged
browser requests, commands the log cannot hold, peers that answer nonsense, timeouts, reads."""
import logging
import os
import subprocess
import sys
import threading
import time

import orjson
import pytest
import requests
from waitress import create_server

from api_server import create_app
from cluster_manager import ClientError, Node, NodeConfig, Waiter
from harness import ROOT, free_ports, wait_for
from raft_core import Ready

ELECTION, HEARTBEAT = 0.3, 0.05


@pytest.fixture
def no_exit(monkeypatch):
    """A raft loop that reaches its crash exit (os._exit) ends its thread instead of the test
    process, so that the test fails on its own assertions; the list records any exit code."""
    exits = []

    def exit_thread(code):
        exits.append(code)
        raise SystemExit(code)
    monkeypatch.setattr(os, "_exit", exit_thread)
    return exits


def serve(app, port=0):
    server = create_server(app, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    return server


@pytest.fixture
def nodes(tmp_path):
    """Makes nodes (optionally served over HTTP on their own port); stops them all at the end."""
    made = []

    def make(peers=(), http=False, start=True, **config):
        port = free_ports(1)[0]
        node = Node(NodeConfig(port=port, peers=list(peers), data_dir=str(tmp_path / f"n{port}"),
                               heartbeat_interval=HEARTBEAT, election_timeout=ELECTION, **config))
        server = serve(create_app(node), port) if http else None
        made.append((node, server))
        if start:
            node.start()
        return node
    yield make
    for node, server in made:
        if server is not None:
            server.close()
        if node.threads[0].ident is None:  # never started
            node.storage.close()
        elif not node.stopping.is_set():
            node.stop()


def unreachable(n=2):
    return [f"http://127.0.0.1:{p}" for p in free_ports(n)]


# ------------------------------------------------------------------ item 4: forged requests
GOOD_HEADERS = {"Content-Type": "application/json", "X-PickleDB-Peer": "1"}


def peer_headers(node):
    """What a peer of `node`'s cluster sends."""
    return {**GOOD_HEADERS, "X-PickleDB-Cluster": node.cluster_id}


def peer_id(url):
    return url.removeprefix("http://")
BROWSER_LIKE = [
    # The fetch(..., {mode: "no-cors", headers: {"Content-Type": "text/plain"}}).
    {"Content-Type": "text/plain", "Origin": "http://evil.example"},
    {"Content-Type": "text/plain;charset=UTF-8", "Origin": "null", "Sec-Fetch-Site": "cross-site",
     "Sec-Fetch-Mode": "no-cors"},
    {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://evil.example"},
    {"Content-Type": "multipart/form-data; boundary=x"},
    # Even with every header a peer sends, a browser's own headers give it away.
    {**GOOD_HEADERS, "Origin": "http://evil.example"},
    {**GOOD_HEADERS, "Sec-Fetch-Site": "same-origin"},
    {**GOOD_HEADERS, "Sec-Fetch-Mode": "cors"},
    # A JSON body without the peer header needs a preflight, which these endpoints never grant.
    {"Content-Type": "application/json"},
    {"X-PickleDB-Peer": "1", "Content-Type": "text/plain"},
]


@pytest.mark.parametrize("headers", BROWSER_LIKE)
def test_a_request_a_browser_could_send_never_reaches_the_log(nodes, headers, caplog):
    peers = unreachable()
    node = nodes(peers, http=True)
    forged = {"type": "append_req", "from": peer_id(peers[0]), "to": node.id, "term": 1, "prev_index": 0,
              "prev_term": 0, "entries": [[1, {"op": "set", "key": "forged", "value": 1}]],
              "commit": 1, "seq": 0, "rid": 1, "members": node.core.members}
    with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
        r = requests.post(node.url + "/replicate", data=orjson.dumps(forged), headers=headers, timeout=5)
    assert r.status_code == 403 and r.json()["error"] == "forbidden", r.text
    view = node.status()
    assert view["last_log_index"] == 0 and view["term"] == 0 and node.state.get_kv("forged") is None
    assert view["transport"]["rejected"] == 1
    assert any("refused POST /replicate" in rec.getMessage() for rec in caplog.records)
    # The same message as a peer sends it is taken: the refusal was for the headers alone.
    r = requests.post(node.url + "/replicate", data=orjson.dumps(forged), headers=peer_headers(node), timeout=5)
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    wait_for(lambda: node.state.get_kv("forged") == 1, 5, "the peer's entry to be applied")


def test_an_installed_snapshot_must_pass_its_checksum_and_be_the_announced_one(nodes):
    """A sender's disk can rot too: a follower that installed a damaged snapshot would store it
    with a fresh, valid checksum of its own."""
    from storage import encode_snapshot
    peers = unreachable()
    node = nodes(peers, http=True)
    state = {"tasks": {}, "kv": {"k": "leader's value"}}
    good = encode_snapshot({"index": 5, "term": 1, "wal_floor": 0}, state)
    rotten = good.replace(b"leader's value", b"leader's valuE")
    msg = {"type": "snap_req", "from": peer_id(peers[0]), "to": node.id, "term": 1, "last_index": 5,
           "last_term": 1, "seq": 0, "rid": 1, "members": node.core.members}
    headers = {**peer_headers(node), "X-Raft-Message": orjson.dumps(msg).decode()}
    for body, why in ((rotten, "checksum"), (encode_snapshot({"index": 7, "term": 1, "wal_floor": 0}, state),
                                             "announced"), (orjson.dumps({"meta": {"index": 5, "term": 1,
                                             "wal_floor": 0}, "state": state}), "checksum")):
        r = requests.post(node.url + "/raft/snapshot", data=body, headers=headers, timeout=5)
        assert r.status_code == 400 and why in r.json()["message"], r.text
        assert node.status()["snapshot_index"] == 0 and node.state.get_kv("k") is None
    r = requests.post(node.url + "/raft/snapshot", data=good, headers=headers, timeout=5)
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    wait_for(lambda: node.state.get_kv("k") == "leader's value", 5, "the snapshot to be installed")


# ------------------------------------------------------------------ item 5: bad commands
def deep(levels, inner="bottom"):
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def single(nodes, **config):
    node = nodes(**config)
    wait_for(lambda: node.status()["is_leader"], 5, "a single node to lead")
    return node


def test_a_command_the_log_cannot_encode_is_refused_before_it_is_proposed(nodes, no_exit):
    node = single(nodes)
    with pytest.raises(ClientError) as info:
        node.propose({"op": "set", "key": "deep", "value": deep(300)})
    assert info.value.status == 400 and info.value.code == "invalid_request"
    with pytest.raises(ClientError) as info:
        node.propose({"op": "set", "key": "big", "value": "x" * (2 * 1024 * 1024)})
    assert info.value.status == 413
    with pytest.raises(ClientError) as info:
        node.propose({"op": "set", "key": "huge-int", "value": 2**64})
    assert info.value.status == 400
    assert node.propose({"op": "set", "key": "after", "value": 1}) == (200, {"key": "after", "value": 1})
    assert no_exit == [] and node.status()["is_leader"]


def test_the_deepest_command_accepted_is_stored_and_survives_a_restart(nodes, no_exit):
    node = single(nodes, snapshot_every=3)
    accepted = []
    for levels in range(20, 40):
        try:
            node.propose({"op": "set", "key": f"d{levels}", "value": deep(levels)})
            accepted.append(levels)
        except ClientError as exc:
            assert exc.status == 400
    assert accepted == list(range(20, accepted[-1] + 1)) and accepted[-1] >= 30
    wait_for(lambda: node.status()["snapshot_index"] > 0, 5, "a snapshot holding deep values")
    node.stop()
    again = Node(node.config)
    again.start()
    try:
        wait_for(lambda: again.state.get_kv(f"d{accepted[-1]}") is not None, 5, "the log replayed")
        assert again.state.get_kv(f"d{accepted[-1]}") == deep(accepted[-1])
    finally:
        again.stop()
    assert no_exit == []


MALLOC_DEBUG = "/lib/x86_64-linux-gnu/libc_malloc_debug.so.0"
ENCODE_DEEPEST = """
import orjson
from cluster_manager import ClientError, checked_size

def nest(levels, inner, kind):
    for _ in range(levels):
        inner = [inner] if kind == "list" else {"k": inner}
    return inner

# The longest scalars orjson writes, innermost in the deepest commands that propose accepts.
for inner in (-2.2250738585072014e-308, -9223372036854775808, 18446744073709551615, "", None, {}):
    for kind in ("list", "dict"):
        levels = 0
        while True:
            try:
                checked_size({"op": "set", "key": "k", "value": nest(levels + 1, inner, kind)})
            except ClientError:
                break
            levels += 1
        command = {"op": "set", "key": "k", "value": nest(levels, inner, kind)}
        for pad in range(1100):  # every position of the closing brackets in orjson's buffer
            filler = [0] * pad
            orjson.dumps({"es": [filler, [1, 1, command]]})  # a WAL record
            orjson.dumps({"entries": [filler, [1, command]]})  # an AppendEntries body
            orjson.dumps({"meta": {}, "state": {"kv": {"p": filler, "k": command["value"]}}})  # a snapshot
print("encoded")
"""


def test_whatever_propose_accepts_is_encoded_without_memory_errors():
    """orjson 3.11.4 writes past its buffer on deep nesting; glibc's malloc checker (which
    verifies every block on free) turns such a write into an abort, in a child process."""
    env = dict(os.environ, LD_PRELOAD=MALLOC_DEBUG, MALLOC_CHECK_="3", PYTHONMALLOC="malloc")
    result = subprocess.run([sys.executable, "-c", ENCODE_DEEPEST], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "encoded", result.stderr[-2000:]


def test_a_command_whose_apply_fails_is_an_error_for_its_client_only(nodes, no_exit):
    """Apply is deterministic, so every replica fails the same entry the same way: it counts as
    applied, changes nothing, and the node goes on."""
    node = single(nodes)
    node.propose({"op": "set", "key": "before", "value": 1})
    before = node.state.snapshot()[2]
    status, body = node.propose({"op": "create", "task": {"title": "no id"}})
    assert status == 400 and body["error"] == "invalid_request"
    assert node.state.snapshot()[2] == before
    assert node.propose({"op": "set", "key": "after", "value": 2})[0] == 200
    assert node.status()["applied_index"] == node.status()["commit_index"]
    assert no_exit == [] and node.status()["is_leader"]


# ------------------------------------------------------------------ item 13: peers answering nonsense
def fake_peer(answer):
    """A peer served by waitress that answers each raft request with `answer(request)`:
    (status, body bytes)."""
    def app(environ, start_response):
        request = orjson.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        status, body = answer(request)
        start_response(f"{status} X", [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(body)))])
        return [body]
    server = serve(app)
    return server, f"http://127.0.0.1:{server.effective_port}"


def proper_reply(me, req):
    """What a healthy follower answers: it grants every vote and holds every entry."""
    reply = {"from": peer_id(me), "to": req["from"], "term": req["term"], "rid": req.get("rid")}
    if req["type"] == "vote_req":
        return dict(reply, type="vote_resp", granted=True, pre=req.get("pre", False))
    return dict(reply, type="append_resp", success=True, hint=0, seq=req["seq"],
                match=req["prev_index"] + len(req["entries"]))


def test_replies_that_are_not_proper_messages_are_refused_and_counted(nodes, no_exit, caplog):
    good, good_url = fake_peer(lambda req: (200, orjson.dumps(proper_reply(good_url, req))))
    bad_answers = [
        lambda req: (200, b"[]"),
        lambda req: (200, b"null"),
        lambda req: (200, b"garbage"),
        lambda req: (200, b'{"type": "append_resp"}'),
        lambda req: (200, orjson.dumps(dict(proper_reply(bad_url, req), term="1"))),
        lambda req: (200, orjson.dumps(dict(proper_reply(bad_url, req), rid=-5))),
        lambda req: (413, b'{"error": "request_entity_too_large", "message": "too big"}'),
        lambda req: (500, b"<html>oops</html>"),
    ]
    turn = iter(range(10**6))
    bad, bad_url = fake_peer(lambda req: bad_answers[next(turn) % len(bad_answers)](req))
    try:
        with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
            node = nodes([good_url, bad_url])
            wait_for(lambda: node.status()["is_leader"], 5, "the node to lead with the good peer's vote")
            term = node.status()["term"]
            for i in range(5):
                assert node.propose({"op": "set", "key": "k", "value": i})[0] == 200
            wait_for(lambda: node.status()["transport"]["refused"][peer_id(bad_url)] >= 2 * len(bad_answers), 10,
                     "every kind of bad answer, twice")
        view = node.status()
        assert view["is_leader"] and view["term"] == term and no_exit == []
        assert view["transport"]["refused"][peer_id(good_url)] == 0
        logged = [r.getMessage() for r in caplog.records if peer_id(bad_url) in r.getMessage()]
        assert any("invalid reply" in m for m in logged) and any("HTTP 413" in m for m in logged)
    finally:
        good.close()
        bad.close()


# ------------------------------------------------------------------ item 14: failures are visible
def test_send_failures_are_logged_as_warnings_without_flooding(nodes, caplog):
    peers = unreachable()

    def lines(peer):
        return [r for r in caplog.records if "cannot reach peer " + peer_id(peer) in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
        node = nodes(peers)
        wait_for(lambda: all(lines(p) for p in peers), 5, "a warning about each unreachable peer")
        wait_for(lambda: all(n >= 3 for n in node.status()["transport"]["failed"].values()), 5,
                 "several failed sends to each peer")
    for peer in peers:
        assert [r.levelno for r in lines(peer)] == [logging.WARNING]  # once per 5 s per peer


# ------------------------------------------------------------------ item 18 / 7: timeouts and reads
def test_a_busy_receiver_answers_before_the_sender_gives_up(nodes):
    """The receiving node gives up on its raft loop before the sender gives up on the answer,
    so a server thread is never held for an answer nobody waits for."""
    from transport import PeerConnection, peer_timeout
    peers = unreachable()
    node = nodes(peers, http=True, start=False)  # no raft loop: every message waits in vain
    vote = {"type": "vote_req", "from": peer_id(peers[0]), "to": node.id, "term": 1, "last_index": 0,
            "last_term": 0, "rid": 1}
    connection = PeerConnection(node.url)
    start = time.monotonic()
    status, body = connection.post("/raft/vote", orjson.dumps(vote), peer_headers(node), 1, peer_timeout(ELECTION))
    assert status == 503 and orjson.loads(body)["error"]
    assert time.monotonic() - start < peer_timeout(ELECTION)
    connection.close()


def test_a_confirmed_read_waits_until_its_index_is_applied(nodes, monkeypatch):
    """The read index is checked against the applied index explicitly, not assumed reached."""
    node = nodes(start=False)
    waiter = Waiter()
    node.reads[7] = waiter
    readies = [Ready(reads=[(7, 1)]),
               Ready(committed=[(1, 1, {"op": "set", "key": "k", "value": "v"})])]
    monkeypatch.setattr(node.core, "ready", lambda: readies.pop(0) if readies else Ready())
    monkeypatch.setattr(node.core, "advance", lambda rd: None)
    node._handle_ready()  # leadership confirmed for index 1, which is not applied yet
    assert waiter.lock.locked()
    node._handle_ready()  # index 1 applied
    assert not waiter.lock.locked() and waiter.error is None
