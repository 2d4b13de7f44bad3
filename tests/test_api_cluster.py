"""The API's edge on a real 3-node cluster (waitress, real sockets), node-to-node traffic through
TCP proxies as in the nemesis suite, so forwarded requests reach the leader at an address that
is not its own: hostile requests sent to a follower must mean on the leader what they meant on
the follower, and must not take down any node."""
import http.client
import json
from urllib.parse import quote, urlsplit

import pytest
import requests

from harness import Cluster, wait_for
from nemesis.proxy import ProxyNet

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    net = ProxyNet()
    c = Cluster(tmp_path_factory.mktemp("edge"), n=3,
                env=lambda i: {"PICKLEDB_PEER_ROUTES": json.dumps(net.routes_for(c.urls[i]))})
    for src in c.nodes:
        for dst in c.nodes:
            if src is not dst:
                net.add_link(src.url, dst.url, dst.port)
    try:
        with c:
            c.wait_for_leader()
            yield c
            assert sum(s["bytes"] for s in net.stats().values()) > 0, "node-to-node traffic bypassed the proxies"
    finally:
        net.close()


def raw(base: str, method: str, target: str, body: bytes | None = None, headers: dict | None = None):
    """One request sent exactly as written (requests would normalise %2e%2e and dot segments)."""
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=15)
    try:
        conn.request(method, target, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type"), resp.read()
    finally:
        conn.close()


def roles(cluster):
    leader = cluster.by_url(cluster.wait_for_leader())
    return leader, [n for n in cluster.nodes if n is not leader]


def assert_json_error(status, content_type, body, expected_status, code=None):
    assert status == expected_status, body[:300]
    assert content_type == "application/json"
    error = json.loads(body)
    assert error["message"] and (code is None or error["error"] == code)


def assert_all_alive(cluster, term):
    for n in cluster.nodes:
        assert n.alive, f"{n.url} died: {n.log_tail()}"
        assert n.status()["term"] == term


def test_a_300_deep_value_sent_to_a_follower_is_refused_and_no_node_dies(cluster):
    leader, (follower, _) = roles(cluster)
    term = leader.status()["term"]
    deep = b'{"key": "deep", "value": ' + b"[" * 300 + b"]" * 300 + b"}"
    for target in (follower, leader, follower):
        assert_json_error(*raw(target.url, "POST", "/set", deep), 400, "invalid_request")
    r = requests.post(follower.url + "/set", json={"key": "after-deep", "value": 1}, timeout=10)
    assert r.status_code == 200, r.text
    assert requests.get(f"{follower.url}/jobs/deep", timeout=10).status_code == 404
    assert_all_alive(cluster, term)


def test_a_follower_forwards_exactly_what_was_asked(cluster):
    leader, (follower, _) = roles(cluster)
    task = requests.post(leader.url + "/tasks", json={"title": "target"}, timeout=10).json()
    tid = task["id"]
    # %3F is part of the id, not a query; %23 is not a fragment: no such task, on either node.
    for node in (follower, leader):
        assert_json_error(*raw(node.url, "PUT", f"/tasks/{tid}%3Fx=1", b'{"title": "hijacked"}'), 404, "not_found")
        assert_json_error(*raw(node.url, "DELETE", f"/tasks/{tid}%23junk"), 404, "not_found")
        # %2e%2e is a task id "..", not the parent directory (the dashboard).
        assert_json_error(*raw(node.url, "GET", "/tasks/%2e%2e"), 404, "not_found")
    assert requests.get(f"{follower.url}/tasks/{tid}", timeout=10).json() == task
    # A percent-encoded query still means the same on the leader.
    status, _, body = raw(follower.url, "GET", "/tasks?limit=%31")
    assert status == 200 and len(json.loads(body)["tasks"]) == 1
    # The leader's paging headers come back through the follower.
    for key in ("page-a", "page-b"):
        requests.post(leader.url + "/set", json={"key": key, "value": 0}, timeout=10).raise_for_status()
    r = requests.get(follower.url + "/jobs?limit=1", timeout=10)
    assert len(r.json()) == 1 and r.headers["X-Next-Offset"] == "1" and int(r.headers["X-Total-Count"]) >= 2


@pytest.mark.parametrize("key", ["a/b", "/lead", "trail/", "a//b", "100%", "%2F", "a b", "é/日本", "..", "?x#y"])
def test_keys_with_any_characters_read_back_through_a_follower(cluster, key):
    leader, (follower, _) = roles(cluster)
    r = requests.post(follower.url + "/set", json={"key": key, "value": {"k": key}}, timeout=10)
    assert r.status_code == 200, r.text
    for node in (follower, leader):
        status, _, body = raw(node.url, "GET", "/jobs/" + quote(key, safe=""))
        assert status == 200 and json.loads(body) == {"key": key, "value": {"k": key}}


def test_head_requests_do_not_use_up_event_streams(cluster):
    node = cluster.node(0)
    for _ in range(20):
        status, content_type, body = raw(node.url, "HEAD", "/events")
        assert status == 200 and content_type.startswith("text/event-stream") and body == b""
    u = urlsplit(node.url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request("GET", "/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"retry:")
    finally:
        conn.close()


def test_only_the_nodes_own_host_names_are_answered(cluster):
    leader, (follower, _) = roles(cluster)
    for node in (follower, leader):
        for host in ("rebound.example", f"rebound.example:{node.port}", f"127.0.0.1:{node.port + 1000}"):
            for method, path in (("GET", "/"), ("GET", "/tasks"), ("POST", "/set")):
                result = raw(node.url, method, path, b'{"key": "rebound", "value": 1}', {"Host": host})
                assert_json_error(*result, 421, "misdirected_request")
        status, _, _ = raw(node.url, "GET", "/status", headers={"Host": f"localhost:{node.port}"})
        assert status == 200
    assert requests.get(f"{leader.url}/jobs/rebound", timeout=10).status_code == 404


def test_cross_site_writes_are_refused_on_every_node(cluster):
    leader, (follower, _) = roles(cluster)
    for node in (follower, leader):
        result = raw(node.url, "POST", "/tasks", b'{"title": "forged"}', {"Content-Type": "text/plain"})
        assert_json_error(*result, 415, "unsupported_media_type")
        result = raw(node.url, "POST", "/set", b'{"key": "forged", "value": 1}', {"Origin": "http://evil.example"})
        assert_json_error(*result, 403, "forbidden_origin")
    r = requests.get(leader.url + "/tasks?limit=10000", timeout=10).json()
    assert not any(t["title"] == "forged" for t in r["tasks"])
    # The page of another node of the cluster may write through a follower.
    r = requests.post(follower.url + "/tasks", json={"title": "from the dashboard"},
                      headers={"Origin": leader.url}, timeout=10)
    assert r.status_code == 201, r.text


def test_server_and_framework_errors_are_json(cluster):
    node = cluster.node(1)
    assert_json_error(*raw(node.url, "GET", "/no/such/route"), 404, "not_found")
    assert_json_error(*raw(node.url, "GET", "/tasks?limit=%ff"), 400, "invalid_request")
    assert_json_error(*raw(node.url, "GET", f"http://127.0.0.1:{node.port}"), 404, "not_found")
    assert_json_error(*raw(node.url, "DELETE", "/tasks"), 405, "method_not_allowed")
    status, content_type, body = raw(node.url, "HEAD", "/set")
    assert (status, content_type, body) == (405, "application/json", b"")
    wait_for(lambda: all(n.alive for n in cluster.nodes), 1, "every node alive")
