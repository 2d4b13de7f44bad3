"""The API's edge, through Flask's test client on a real in-process node: host names, origins,
content types, what a value may hold, every key readable, bounded list pages, stream slots and
JSON for every error werkzeug raises."""
import json
import threading
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import api_common
from api_common import LIST_SLOTS, SSE_MAX_STREAMS, request_target
from api_kv import MAX_DEPTH
from api_server import served_names
from api_tasks import MAX_TASK_ID
from harness import free_ports, wait_for
from test_api import api_client, assert_error, client, make_node, node  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One leader for the tests that only add data (keys and tasks they name themselves)."""
    n = make_node(tmp_path_factory.mktemp("edge"))
    wait_for(lambda: n.status()["is_leader"], 5, "single node to lead")
    yield n
    n.stop()


def port_of(node):
    return node.config.port


def nested(depth, leaf=0):
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


# ------------------------------------------------------------------ host names (DNS rebinding)
def test_only_the_configured_host_names_are_answered(client, node):
    port = port_of(node)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert client.get("/status", headers={"Host": host}).status_code == 200, host
    for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1:{port + 1}", "127.0.0.1",
                 f"127.0.0.1.evil.example:{port}", f"localhost.:{port}"):
        for method, path in (("GET", "/"), ("GET", "/tasks"), ("GET", "/status"), ("GET", "/events"),
                             ("POST", "/tasks"), ("GET", "/no/such/route")):
            r = client.open(path, method=method, headers={"Host": host}, json={"title": "rebound"})
            assert_error(r, 421, "misdirected_request")
    assert client.get("/tasks").get_json()["total"] == 0


def test_hosts_and_origins_come_from_the_node_its_peers_and_extra_names():
    members = ["http://10.0.0.1:4000", "http://10.0.0.2:4001", "http://localhost:4002", "http://peer.example"]
    hosts, origins = served_names("http://10.0.0.1:4000", members,
                                  extra_hosts=["Tasks.Example", "proxy.example:8443", "[fd00::1]"])
    assert hosts == {"127.0.0.1:4000", "localhost:4000", "[::1]:4000", "10.0.0.1:4000", "10.0.0.2:4000",
                     "peer.example:4000", "tasks.example:4000", "proxy.example:8443", "[fd00::1]:4000"}
    assert origins == {f"http://{h}" for h in hosts} | {
        "http://10.0.0.2:4001", "http://localhost:4002", "http://127.0.0.1:4002", "http://[::1]:4002",
        "http://peer.example"}
    assert served_names("http://127.0.0.1:80", [])[0] == {"127.0.0.1", "localhost", "[::1]"}
    hosts, origins = served_names("https://node.example", ["https://node.example", "https://10.0.0.2:8443"])
    assert {"node.example", "10.0.0.2"} <= hosts  # this node's port, the default one for https
    assert {"https://node.example", "https://10.0.0.2:8443"} <= origins and "http://node.example" not in origins


def test_extra_host_names_are_answered(node):
    client = api_client(node, extra_hosts=["tasks.example"])
    assert client.get("/status", headers={"Host": f"tasks.example:{port_of(node)}"}).status_code == 200
    r = client.post("/tasks", json={"title": "t"}, headers={"Origin": f"http://tasks.example:{port_of(node)}"})
    assert r.status_code == 201


# ------------------------------------------------------------------ cross-site writes
def test_writes_from_foreign_origins_are_refused(client, node):
    task = client.post("/tasks", json={"title": "mine"}).get_json()
    port = port_of(node)
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Origin": f"http://127.0.0.1:{port + 1}"}, {"Origin": f"https://127.0.0.1:{port}"},
                    {"Sec-Fetch-Site": "cross-site"}):
        assert_error(client.post("/tasks", json={"title": "forged"}, headers=headers), 403, "forbidden_origin")
        assert_error(client.post("/set", json={"key": "k", "value": 1}, headers=headers), 403, "forbidden_origin")
        assert_error(client.put(f"/tasks/{task['id']}", json={"title": "x"}, headers=headers), 403)
        assert_error(client.delete(f"/tasks/{task['id']}", headers=headers), 403, "forbidden_origin")
    assert client.get("/jobs").get_json() == {}
    listing = client.get("/tasks").get_json()
    assert listing["total"] == 1 and listing["tasks"][0] == task
    # Reads and the cluster's own pages are fine.
    assert client.get("/tasks", headers={"Origin": "http://evil.example"}).status_code == 200
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        r = client.post("/tasks", json={"title": "ok"}, headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 201


def test_a_peer_nodes_dashboard_may_write(tmp_path):
    a, b = free_ports(2)
    n = make_node(tmp_path, peers=[f"http://127.0.0.1:{a}", f"http://localhost:{b}"])
    try:
        client = api_client(n)
        for origin in (f"http://127.0.0.1:{a}", f"http://localhost:{a}", f"http://127.0.0.1:{b}"):
            r = client.post("/tasks", json={"title": "x"}, headers={"Origin": origin, "Sec-Fetch-Site": "cross-site"})
            assert_error(r, 503, "no_leader")  # past the edge: only the missing leader stops it
    finally:
        n.stop()


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx", "text/json"])
def test_bodies_must_be_declared_as_json(client, content_type):
    task = client.post("/tasks", json={"title": "t"}).get_json()
    headers = {"Content-Type": content_type} if content_type else {}
    for method, path, body in (("POST", "/tasks", {"title": "x"}), ("POST", "/set", {"key": "k", "value": 1}),
                               ("PUT", f"/tasks/{task['id']}", {"title": "changed"})):
        r = client.open(path, method=method, data=json.dumps(body), headers=headers)
        assert_error(r, 415, "unsupported_media_type")
    assert client.get("/jobs").get_json() == {}
    assert client.get("/tasks").get_json()["tasks"] == [task]
    r = client.post("/tasks", data=b'{"title": "charset"}', content_type="application/json; charset=utf-8")
    assert r.status_code == 201
    assert client.delete(f"/tasks/{task['id']}").status_code == 200  # DELETE has no body to declare


# ------------------------------------------------------------------ values the cluster can store exactly
def test_value_depth_is_bounded(shared_node):
    client = api_client(shared_node)
    for value in (nested(MAX_DEPTH), nested(MAX_DEPTH - 1, leaf=[]), [nested(MAX_DEPTH - 1), 1]):
        r = client.post("/set", json={"key": "deep-ok", "value": value})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert client.get("/jobs/deep-ok").get_json()["value"] == value
    for value in (nested(MAX_DEPTH + 1), nested(MAX_DEPTH, leaf={}), [1, nested(300)]):
        body = assert_error(client.post("/set", json={"key": "deep", "value": value}), 400, "invalid_request")
        assert str(MAX_DEPTH) in body["message"]
    raw = b'{"key": "deep", "value": ' + b"[" * 300 + b"]" * 300 + b"}"
    assert_error(client.post("/set", data=raw, content_type="application/json"), 400, "invalid_request")
    assert_error(client.post("/tasks", json={"title": "t", "description": nested(300)}), 400)
    assert_error(client.get("/jobs/deep"), 404)


@pytest.mark.parametrize("literal", ["9223372036854775808", "18446744073709551615", "18446744073709551616",
                                     "-9223372036854775809", "1" * 5000, "NaN", "Infinity", "-Infinity",
                                     "1e400", "[1, {\"x\": 18446744073709551616}]"])
def test_numbers_that_cannot_be_stored_exactly_are_refused(shared_node, literal):
    client = api_client(shared_node)
    raw = b'{"key": "num-bad", "value": ' + literal.encode() + b"}"
    assert_error(client.post("/set", data=raw, content_type="application/json"), 400, "invalid_request")
    assert_error(client.get("/jobs/num-bad"), 404)


@pytest.mark.parametrize("literal, stored", [("9223372036854775807", 2**63 - 1), ("-9223372036854775808", -2**63),
                                             ("1e19", 1e19), ("-1.8446744073709552e19", -1.8446744073709552e19),
                                             ("[0.5, 1E300]", [0.5, 1e300])])
def test_numbers_in_range_are_stored_exactly(shared_node, literal, stored):
    client = api_client(shared_node)
    raw = b'{"key": "num-ok", "value": ' + literal.encode() + b"}"
    r = client.post("/set", data=raw, content_type="application/json")
    assert r.status_code == 200 and r.get_json()["value"] == stored
    got = orjson.loads(client.get("/jobs/num-ok").get_data())["value"]
    assert got == stored and type(got) is type(stored)


def test_value_size_is_bounded_once_encoded(shared_node):
    client = api_client(shared_node)
    raw = b'{"key": "wide", "value": [' + b",".join([b"1e9"] * 100_000) + b"]}"  # 400 KB, 1.3 MB encoded
    assert len(raw) < api_common.MAX_BODY
    assert_error(client.post("/set", data=raw, content_type="application/json"), 413, "request_entity_too_large")
    assert_error(client.get("/jobs/wide"), 404)


@pytest.mark.parametrize("key", ["/", "a/b", "/lead", "trail/", "a//b", "%", "%2F", "100%", " ", "a b", "é",
                                 "日本語", "\U0001F600", "?x=1", "#frag", ".", "..", "a\\b", "\n", "+", "k" * 500])
def test_every_key_is_readable(shared_node, key):
    client = api_client(shared_node)
    assert client.post("/set", json={"key": key, "value": [key]}).status_code == 200
    r = client.get("/jobs/" + quote(key, safe=""))
    assert r.status_code == 200 and r.get_json() == {"key": key, "value": [key]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=40))
def test_any_key_reads_back(shared_node, key):
    client = api_client(shared_node)
    assert client.post("/set", json={"key": key, "value": key}).status_code == 200
    r = client.get("/jobs/" + quote(key, safe=""))
    assert r.status_code == 200 and r.get_json() == {"key": key, "value": key}


def test_overlong_task_ids_are_not_replicated(client, node):
    before = node.status()["commit_index"]
    long_id = "a" * (MAX_TASK_ID + 1)
    assert_error(client.put(f"/tasks/{long_id}", json={"title": "x"}), 404, "not_found")
    assert_error(client.delete(f"/tasks/{long_id}"), 404, "not_found")
    assert_error(client.put(f"/tasks/{long_id}", json={"title": ""}), 400)  # validation still comes first
    assert node.status()["commit_index"] == before


# ------------------------------------------------------------------ bounded list pages
def page_through(client, path, limit):
    items, offset = [], 0
    while True:
        r = client.get(f"{path}?limit={limit}&offset={offset}")
        assert r.status_code == 200
        body = r.get_json()
        yield r, body
        if body["next_offset"] is None:
            return
        assert body["next_offset"] > offset
        offset = body["next_offset"]


def test_task_pages_are_bounded_in_count_and_bytes(client, node, monkeypatch):
    ids = [client.post("/tasks", json={"title": f"t{i}", "description": "d" * 300}).get_json()["id"]
           for i in range(12)]
    monkeypatch.setattr(api_common, "DEFAULT_PAGE", 5)
    body = client.get("/tasks").get_json()
    assert len(body["tasks"]) == 5 and body["total"] == 12 and body["next_offset"] == 5
    assert body["index"] == node.status()["applied_index"]
    body = client.get("/tasks?offset=10").get_json()
    assert [t["id"] for t in body["tasks"]] == ids[1::-1] and body["next_offset"] is None
    assert client.get("/tasks?offset=50").get_json() == {"tasks": [], "total": 12, "index": body["index"],
                                                          "next_offset": None}
    # A page also ends at MAX_PAGE_BYTES of tasks (but always holds one); next_offset goes on.
    monkeypatch.setattr(api_common, "MAX_PAGE_BYTES", 1000)
    seen = []
    for r, body in page_through(client, "/tasks", 10):
        assert len(body["tasks"]) == 2 and len(r.get_data()) < 1200
        seen += [t["id"] for t in body["tasks"]]
    assert seen == ids[::-1]
    monkeypatch.setattr(api_common, "MAX_PAGE_BYTES", 10)
    assert len(client.get("/tasks").get_json()["tasks"]) == 1


def test_key_value_pages_are_bounded_and_say_where_to_go_on(client, monkeypatch):
    for i in range(7):
        client.post("/set", json={"key": f"k{i}", "value": "v" * 100})
    monkeypatch.setattr(api_common, "DEFAULT_PAGE", 3)
    r = client.get("/jobs")
    assert r.get_json() == {f"k{i}": "v" * 100 for i in range(3)}
    assert r.headers["X-Total-Count"] == "7" and r.headers["X-Next-Offset"] == "3"
    monkeypatch.setattr(api_common, "MAX_PAGE_BYTES", 250)  # two values a page
    got, offset = {}, 0
    while offset is not None:
        r = client.get(f"/jobs?offset={offset}")
        assert len(r.get_json()) <= 2
        got.update(r.get_json())
        offset = r.headers.get("X-Next-Offset")
    assert got == {f"k{i}": "v" * 100 for i in range(7)}
    last = client.get("/jobs?offset=6")
    assert "X-Next-Offset" not in last.headers and last.headers["X-Total-Count"] == "7"
    for bad in ("limit=0", "limit=10001", "offset=-1", "offset=x"):
        assert_error(client.get(f"/jobs?{bad}"), 400, "invalid_request")


def test_only_a_few_lists_are_built_at_once(node):
    app_client = api_client(node)
    app_client.post("/tasks", json={"title": "t"})
    inside, release = threading.Semaphore(0), threading.Event()
    real = node.state.list_tasks

    def slow_list(limit, offset):
        inside.release()
        release.wait(10)
        return real(limit, offset)
    node.state.list_tasks = slow_list
    results = []

    def list_in_thread():
        other = app_client.application.test_client()  # same app, so the same slots
        other.node_url = node.url
        results.append(other.get("/tasks?consistency=stale"))
    threads = [threading.Thread(target=list_in_thread) for _ in range(LIST_SLOTS)]
    try:
        for t in threads:
            t.start()
        for _ in range(LIST_SLOTS):
            assert inside.acquire(timeout=10)
        r = app_client.get("/tasks?consistency=stale")
        assert_error(r, 503, "busy")
        assert int(r.headers["Retry-After"]) >= 1
        assert_error(app_client.get("/jobs?consistency=stale"), 503, "busy")
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert [r.status_code for r in results] == [200] * LIST_SLOTS
    for r in results:  # a page holds its slot until it is sent
        assert r.get_json()["total"] == 1
    node.state.list_tasks = real
    for _ in range(2 * LIST_SLOTS):  # the server closes pages it never sent: HEAD, or a client gone
        app_client.head("/tasks").close()
        app_client.get("/jobs").close()
    assert app_client.get("/tasks").status_code == 200 and app_client.get("/jobs").status_code == 200


# ------------------------------------------------------------------ event stream slots
def test_head_and_unread_event_streams_free_their_slots(client):
    for _ in range(SSE_MAX_STREAMS + 4):
        r = client.head("/events")
        assert r.status_code == 200 and r.mimetype == "text/event-stream" and r.get_data() == b""
        r.close()
    for _ in range(SSE_MAX_STREAMS + 4):  # the server closes a response whose body never started
        r = client.get("/events")
        assert r.status_code == 200
        r.close()
    r = client.get("/events")
    assert r.status_code == 200 and next(r.response).startswith(b"retry:")
    r.close()


# ------------------------------------------------------------------ werkzeug's own errors are JSON too
def test_framework_errors_are_json(client):
    assert_error(client.get("/no/such/route"), 404, "not_found")
    for path in ("/tasks//", "/jobs//", ""):  # no redirect (an HTML page) to /tasks or /
        r = client.get("/", environ_overrides={"PATH_INFO": path, "REQUEST_URI": path or "/"})
        assert_error(r, 404, "not_found")
    assert_error(client.get("/tasks/"), 404, "not_found")
    assert_error(client.get("/jobs/"), 404, "not_found")
    r = client.delete("/tasks")
    assert_error(r, 405, "method_not_allowed")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_error(client.post("/status", json={}), 405, "method_not_allowed")
    r = client.head("/set")
    assert r.status_code == 405 and r.mimetype == "application/json"
    big = b'{"key": "k", "value": "' + b"a" * (1024 * 1024) + b'"}'
    assert_error(client.post("/set", data=big, content_type="application/json"), 413, "request_entity_too_large")
    assert_error(client.post("/tasks", data=b"title=x", content_type="application/x-www-form-urlencoded"),
                 415, "unsupported_media_type")
    for query in ("limit=%ff", "limit=%", "offset=1e3", "limit=%00", "consistency=%ff"):
        assert_error(client.get(f"/tasks?{query}"), 400, "invalid_request")


# ------------------------------------------------------------------ what a follower forwards
@pytest.mark.parametrize("raw, target", [
    ("/tasks/abc%3Fx=1", "/tasks/abc%3Fx=1"),
    ("/tasks/abc%23junk", "/tasks/abc%23junk"),
    ("/tasks/%2e%2e?consistency=stale", "/tasks/%2e%2e?consistency=stale"),
    ("/jobs/a%2Fb%20c?x=%zz", "/jobs/a%2Fb%20c?x=%zz"),
    ("/jobs/\u00c3\u00a9", "/jobs/%C3%A9"),  # raw UTF-8 bytes, as latin-1 text
    ("http://evil.example/tasks?limit=1", "/tasks?limit=1"),
    ("http://evil.example", "/"),
])
def test_the_forwarded_target_is_the_raw_one(raw, target):
    assert request_target({"REQUEST_URI": raw}) == target


def test_a_route_without_a_declared_permission_stops_the_app(node, monkeypatch):
    import api_server
    from flask import Blueprint
    undeclared = Blueprint("undeclared", __name__)
    undeclared.add_url_rule("/forgotten", "forgotten", lambda: "")
    monkeypatch.setattr(api_server, "BLUEPRINTS", (*api_server.BLUEPRINTS, undeclared))
    with pytest.raises(RuntimeError, match="/forgotten"):
        api_server.create_app(node)
