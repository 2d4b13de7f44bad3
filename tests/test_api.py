"""Every endpoint and every bad-input class, through Flask's test client on a real node."""
import contextlib

import pytest
from flask.testing import FlaskClient

from api_server import create_app
from api_tasks import MAX_DESCRIPTION, MAX_TITLE
from cluster_manager import Node, NodeConfig
from harness import free_ports, wait_for
from transport import MAX_PEER_MESSAGE


class NodeClient(FlaskClient):
    """Flask's test client, addressed like a real client: the Host header is the node's host:port."""
    node_url = None

    def open(self, *args, **kwargs):
        kwargs.setdefault("base_url", self.node_url)
        return super().open(*args, **kwargs)


def api_client(node, **options) -> NodeClient:
    app = create_app(node, **options)
    app.test_client_class = NodeClient
    client = app.test_client()
    client.node_url = node.url
    return client


def make_node(tmp_path, peers=(), secret=None):
    port = free_ports(1)[0]
    node = Node(NodeConfig(port=port, peers=list(peers), data_dir=str(tmp_path / f"n{port}"),
                           heartbeat_interval=0.05, election_timeout=0.2, cluster_secret=secret))
    node.start()
    return node


def snapshotting_config(tmp_path, snapshot_every=5) -> NodeConfig:
    """A single node that snapshots and compacts its log every few entries; start it with
    running_node(), again with the same config to restart it on the same data."""
    return NodeConfig(port=free_ports(1)[0], data_dir=str(tmp_path / "n"), heartbeat_interval=0.05,
                      election_timeout=0.2, snapshot_every=snapshot_every)


@contextlib.contextmanager
def running_node(config: NodeConfig):
    node = Node(config)
    node.start()
    try:
        wait_for(lambda: node.status()["is_leader"], 5, "single node to lead")
        yield node
    finally:
        node.stop()


@pytest.fixture
def node(tmp_path):
    n = make_node(tmp_path)
    wait_for(lambda: n.status()["is_leader"], 5, "single node to lead")
    yield n
    n.stop()


@pytest.fixture
def client(node):
    return api_client(node)


@pytest.fixture
def leaderless(tmp_path):
    """A node whose peers never answer: it can never win an election."""
    a, b = free_ports(2)
    n = make_node(tmp_path, peers=[f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}"])
    yield api_client(n)
    n.stop()


def assert_error(resp, status, code=None):
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body["message"], str) and body["message"]
    if code:
        assert body["error"] == code
    return body


def test_task_lifecycle(client):
    r = client.post("/tasks", json={"title": "write docs", "description": "README", "completed": False})
    assert r.status_code == 201
    task = r.get_json()
    assert set(task) == {"id", "title", "description", "completed", "created_at", "updated_at", "version"}
    assert task["version"] == 1 and task["created_at"] == task["updated_at"]
    second = client.post("/tasks", json={"title": "second"}).get_json()
    assert second["description"] == "" and second["completed"] is False

    listing = client.get("/tasks").get_json()
    assert [t["id"] for t in listing["tasks"]] == [second["id"], task["id"]]  # newest first
    assert listing["total"] == 2
    assert client.get(f"/tasks/{task['id']}").get_json() == task

    r = client.put(f"/tasks/{task['id']}", json={"completed": True})
    updated = r.get_json()
    assert r.status_code == 200 and updated["completed"] is True and updated["version"] == 2
    assert updated["title"] == "write docs" and updated["updated_at"] >= task["updated_at"]

    r = client.delete(f"/tasks/{task['id']}")
    assert r.status_code == 200 and r.get_json() == {"deleted": task["id"]}
    assert_error(client.get(f"/tasks/{task['id']}"), 404, "not_found")
    assert_error(client.put(f"/tasks/{task['id']}", json={"title": "x"}), 404, "not_found")
    assert_error(client.delete(f"/tasks/{task['id']}"), 404, "not_found")


def test_pagination_and_stale_reads(client):
    ids = [client.post("/tasks", json={"title": f"t{i}"}).get_json()["id"] for i in range(5)]
    page = client.get("/tasks?limit=2&offset=1").get_json()
    assert [t["id"] for t in page["tasks"]] == [ids[3], ids[2]] and page["total"] == 5
    stale = client.get("/tasks?consistency=stale").get_json()
    assert [t["id"] for t in stale["tasks"]] == ids[::-1]
    for bad in ("limit=0", "limit=x", "offset=-1", "limit=100001", "consistency=eventual"):
        assert_error(client.get(f"/tasks?{bad}"), 400, "invalid_request")


def test_legacy_set_and_jobs(client):
    for value in ("text", 3, 2.5, None, True, [1, "a"], {"nested": {"x": [1]}}):
        r = client.post("/set", json={"key": "k", "value": value})
        assert r.status_code == 200 and r.get_json() == {"key": "k", "value": value}
        assert client.get("/jobs").get_json() == {"k": value}
        assert client.get("/jobs/k").get_json() == {"key": "k", "value": value}
    assert_error(client.get("/jobs/missing"), 404, "not_found")


@pytest.mark.parametrize("body, fragment", [
    ({}, "'title' is required"),
    ({"title": ""}, "non-empty"),
    ({"title": "   "}, "non-empty"),
    ({"title": 5}, "non-empty string"),
    ({"title": None}, "non-empty string"),
    ({"title": "x" * (MAX_TITLE + 1)}, "longer than"),
    ({"title": "ok", "description": 3}, "'description' must be a string"),
    ({"title": "ok", "description": "d" * (MAX_DESCRIPTION + 1)}, "longer than"),
    ({"title": "ok", "completed": "yes"}, "true or false"),
    ({"title": "ok", "completed": 1}, "true or false"),
    ({"title": "ok", "id": "mine"}, "unknown field"),
])
def test_create_rejects_bad_fields(client, body, fragment):
    body = assert_error(client.post("/tasks", json=body), 400, "invalid_request")
    assert fragment in body["message"]
    assert client.get("/tasks").get_json()["total"] == 0  # nothing half-written


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b'"a string"', b"null", b"{\"title\": NaN}",
                                 b"{\"title\": \"x\"", b"[" * 5000, b"\xff\xfe"])
def test_malformed_bodies_get_400(client, raw):
    assert_error(client.post("/tasks", data=raw, content_type="application/json"), 400, "invalid_request")
    assert_error(client.post("/set", data=raw, content_type="application/json"), 400, "invalid_request")


def test_update_validation(client):
    task = client.post("/tasks", json={"title": "a"}).get_json()
    assert "nothing to update" in assert_error(client.put(f"/tasks/{task['id']}", json={}), 400)["message"]
    assert_error(client.put(f"/tasks/{task['id']}", json={"version": 9}), 400, "invalid_request")
    assert_error(client.put(f"/tasks/{task['id']}", json={"completed": "no"}), 400, "invalid_request")
    assert_error(client.put(f"/tasks/{task['id']}", data=b"[]", content_type="application/json"), 400)
    assert client.get(f"/tasks/{task['id']}").get_json()["version"] == 1


def test_set_validation(client):
    assert_error(client.post("/set", json={"value": 1}), 400, "invalid_request")
    assert_error(client.post("/set", json={"key": "", "value": 1}), 400, "invalid_request")
    assert_error(client.post("/set", json={"key": 7, "value": 1}), 400, "invalid_request")
    assert_error(client.post("/set", json={"key": "k"}), 400, "invalid_request")
    assert_error(client.post("/set", json={"key": "k", "value": 1, "ttl": 3}), 400, "invalid_request")
    assert_error(client.post("/set", json={"key": "k" * 501, "value": 1}), 400, "invalid_request")
    assert client.get("/jobs").get_json() == {}


def test_body_size_cap_and_unknown_routes(client):
    big = b'{"title": "' + b"a" * (1024 * 1024) + b'"}'
    assert_error(client.post("/tasks", data=big, content_type="application/json"), 413)
    assert_error(client.get("/no/such/route"), 404)
    assert_error(client.patch("/tasks"), 405)
    assert_error(client.post("/health"), 405)


def test_cluster_views(client, node):
    for path in ("/health", "/status", "/cluster/status", "/heartbeat"):
        r = client.get(path)
        assert r.status_code == 200, path
        view = r.get_json()
        assert view["role"] == "leader" and view["term"] >= 1 and view["leader"] == node.id
    status = client.get("/cluster/status").get_json()
    assert status["is_leader"] and status["commit_index"] >= 1 and "applied_index" in status
    assert [n["url"] for n in status["nodes"]] == [node.url]
    assert status["nodes"][0]["reachable"] and status["nodes"][0]["lag"] == 0


def test_dashboard_is_served_and_nothing_else_from_the_tree(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    for path in ("/api_server.py", "/examples/node_dashboard.html", "/../requirements.txt", "/static/x"):
        assert client.get(path).status_code == 404


def test_events_stream_announces_applied_changes(client):
    r = client.get("/events", buffered=False)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    chunks = r.response
    assert next(chunks).startswith(b"retry:")
    first = next(chunks)
    assert first.startswith(b"id: 1\nevent: applied\n")  # the leader's first entry, its no-op
    r.close()


def test_without_a_leader_writes_get_503_and_stale_reads_work(leaderless):
    client = leaderless
    body = assert_error(client.post("/tasks", json={"title": "x"}), 503, "no_leader")
    r = client.post("/tasks", json={"title": "x"})
    assert int(r.headers["Retry-After"]) >= 1
    assert_error(client.post("/set", json={"key": "a", "value": 1}), 503, "no_leader")
    assert_error(client.get("/tasks"), 503, "no_leader")
    r = client.get("/tasks?consistency=stale")
    assert r.status_code == 200 and r.get_json()["tasks"] == []
    assert client.get("/jobs?consistency=stale").get_json() == {}
    assert body["error"] == "no_leader"
    # Validation still comes first: bad input is a 400 even with no leader.
    assert_error(client.post("/tasks", json={"title": ""}), 400, "invalid_request")


PEER = {"X-PickleDB-Peer": "1"}  # with Content-Type: application/json, what every peer request carries


def test_internal_endpoints_validate_messages(client):
    for path in ("/heartbeat", "/replicate", "/raft/vote"):
        assert_error(client.post(path, data=b"{}", content_type="application/json", headers=PEER), 400)
        assert_error(client.post(path, data=b"garbage", content_type="application/json", headers=PEER), 400)
    bad_entries = {"type": "append_req", "from": "http://x", "term": 1, "prev_index": 0, "prev_term": 0,
                   "commit": 0, "seq": 0, "entries": [[1, "not a command"]]}
    assert_error(client.post("/replicate", json=bad_entries, headers=PEER), 400)
    assert_error(client.post("/raft/snapshot", data=b"{}", content_type="application/json", headers=PEER), 400)
    assert_error(client.post("/replicate", data=b"x" * (MAX_PEER_MESSAGE + 1), content_type="application/json",
                             headers=PEER), 413, "request_entity_too_large")
    assert_error(client.post("/raft/vote", data=b"{}", content_type="application/json",
                             headers={**PEER, "Content-Length": "many"}), 400)
    assert_error(client.get("/raft/vote"), 405)  # only POST is an RPC; the rest is the client API's
    assert_error(client.post("/raft/vote", data=b"{}", content_type="text/plain", headers=PEER), 403, "forbidden")
    assert_error(client.post("/raft/vote", data=b"{}", content_type="application/json"), 403, "forbidden")


def test_unknown_sender_gets_no_vote(client, node):
    msg = {"type": "vote_req", "from": "http://127.0.0.1:1", "to": node.id, "term": 99, "last_index": 99,
           "last_term": 99, "rid": 1}
    assert_error(client.post("/raft/vote", json=msg, headers={**PEER, "X-PickleDB-Cluster": node.cluster_id}), 400)
    assert node.status()["term"] < 99


def test_secret_is_required_for_internal_endpoints(tmp_path):
    n = make_node(tmp_path, secret="topsecret")
    try:
        c = api_client(n)
        msg = {"type": "vote_req", "from": "http://x", "term": 1, "last_index": 0, "last_term": 0}
        assert_error(c.post("/raft/vote", json=msg), 401, "unauthorized")
        assert_error(c.post("/raft/vote", json=msg, headers={"X-Cluster-Secret": "wrong"}), 403, "forbidden")
        assert c.get("/status").status_code == 200
    finally:
        n.stop()


def test_cors_allows_cluster_origins_only(tmp_path):
    a, b = free_ports(2)
    n = make_node(tmp_path, peers=[f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}"])
    try:
        c = api_client(n)
        r = c.get("/status", headers={"Origin": f"http://127.0.0.1:{a}"})
        assert r.headers.get("Access-Control-Allow-Origin") == f"http://127.0.0.1:{a}"
        r = c.get("/status", headers={"Origin": f"http://localhost:{b}"})
        assert r.headers.get("Access-Control-Allow-Origin") == f"http://localhost:{b}"
        r = c.get("/status", headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        n.stop()
