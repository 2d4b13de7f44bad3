"""Idempotency-Key: a repeat gets the first answer, on any node, across a leader's death and a
restart from a snapshot; another request under the same key is refused."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from harness import Cluster, wait_for
from storage import Storage
from test_api import api_client, assert_error, client, node, running_node, snapshotting_config  # noqa: F401


def test_a_repeat_gets_the_first_answer(client):
    first = client.post("/tasks", json={"title": "pay"}, headers={"Idempotency-Key": "k-1"})
    again = client.post("/tasks", json={"title": "pay"}, headers={"Idempotency-Key": '"k-1"'})  # sf-string form
    assert first.status_code == again.status_code == 201 and first.get_json() == again.get_json()
    assert "Idempotent-Replayed" not in first.headers and again.headers["Idempotent-Replayed"] == "true"
    assert first.headers["ETag"] == again.headers["ETag"] == '"1"'
    assert client.get("/tasks").get_json()["total"] == 1
    task_id = first.get_json()["id"]
    put = [client.put(f"/tasks/{task_id}", json={"completed": True}, headers={"Idempotency-Key": "k-2"})
           for _ in range(2)]
    assert [r.get_json()["version"] for r in put] == [2, 2] and put[1].headers["ETag"] == '"2"'
    gone = [client.delete(f"/tasks/{task_id}", headers={"Idempotency-Key": "k-3"}) for _ in range(2)]
    assert [r.status_code for r in gone] == [200, 200] and gone[1].get_json() == {"deleted": task_id}
    assert client.delete(f"/tasks/{task_id}").status_code == 404  # without a key: applied again
    sets = [client.post("/set", json={"key": "n", "value": v}, headers={"Idempotency-Key": "k-4"}) for v in (1, 1)]
    assert [r.get_json() for r in sets] == [{"key": "n", "value": 1}] * 2


def test_a_key_reused_for_another_request_is_refused(client):
    client.post("/tasks", json={"title": "a"}, headers={"Idempotency-Key": "k"})
    for method, path, body in (("POST", "/tasks", {"title": "b"}), ("POST", "/set", {"key": "a", "value": 1}),
                               ("PUT", "/tasks/x", {"title": "a"})):
        r = client.open(path, method=method, json=body, headers={"Idempotency-Key": "k"})
        assert_error(r, 422, "idempotency_key_reused")
    # If-Match is part of the request.
    task = client.post("/tasks", json={"title": "c"}, headers={"Idempotency-Key": "k2"}).get_json()
    client.put(f"/tasks/{task['id']}", json={"title": "d"}, headers={"Idempotency-Key": "k3", "If-Match": '"1"'})
    assert_error(client.put(f"/tasks/{task['id']}", json={"title": "d"}, headers={"Idempotency-Key": "k3"}),
                 422, "idempotency_key_reused")
    # The same JSON in another key order is the same request.
    r = client.post("/set", data=b'{"value": 2, "key": "z"}', content_type="application/json",
                    headers={"Idempotency-Key": "k4"})
    again = client.post("/set", data=b'{"key":"z","value":2}', content_type="application/json",
                        headers={"Idempotency-Key": "k4"})
    assert r.status_code == again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert client.get("/tasks").get_json()["total"] == 2


def test_malformed_keys_are_400(client):
    for key in ("", "x" * 256, "caf\u00e9", "tab\there", "del\x7f", '""'):
        r = client.post("/tasks", json={"title": "a"}, headers={"Idempotency-Key": key.encode().decode("latin-1")})
        assert_error(r, 400, "invalid_request")
    assert client.post("/tasks", json={"title": "a"}, headers={"Idempotency-Key": "x" * 255}).status_code == 201
    assert client.get("/tasks").get_json()["total"] == 1


def test_repeats_in_flight_together_apply_once(client):
    def send(_):
        r = client.post("/tasks", json={"title": "once"}, headers={"Idempotency-Key": "burst"})
        return r.status_code, r.get_json()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, range(24)))
    assert len(set(map(str, answers))) == 1 and answers[0][0] == 201
    assert client.get("/tasks").get_json()["total"] == 1


def test_the_key_table_survives_a_restart_from_a_snapshot(tmp_path):
    config = snapshotting_config(tmp_path)
    with running_node(config) as node:
        c = api_client(node)
        first = c.post("/tasks", json={"title": "kept"}, headers={"Idempotency-Key": "snap"})
        for i in range(8):
            c.post("/set", json={"key": "k", "value": i})
        wait_for(lambda: node.status()["snapshot_index"] >= 5, 5, "a snapshot and compaction")
    storage = Storage(config.data_dir)
    state, _ = storage.load()
    storage.close()
    assert "snap" in state["idempotency"]["keys"]  # in the snapshot, not only replayed from the log
    with running_node(config) as node:
        again = api_client(node).post("/tasks", json={"title": "kept"}, headers={"Idempotency-Key": "snap"})
        assert again.status_code == 201 and again.get_json() == first.get_json()
        assert len(node.state.tasks) == 1


def post(url, path, body, key, timeout=3.0):
    try:
        r = requests.post(url + path, json=body, headers={"Idempotency-Key": key}, timeout=timeout)
        return r.status_code, r.json()
    except requests.RequestException as exc:
        return None, repr(exc)


def test_retries_through_followers_and_a_leader_kill_never_duplicate(tmp_path):
    with Cluster(tmp_path, n=3, base_port=24000) as cluster:
        leader = cluster.by_url(cluster.wait_for_leader())
        followers = [n for n in cluster.nodes if n is not leader]
        # A retry through another node, and through a follower first.
        first = post(leader.url, "/tasks", {"title": "via"}, "via")
        assert first[0] == 201
        assert post(followers[0].url, "/tasks", {"title": "via"}, "via") == first
        second = post(followers[1].url, "/tasks", {"title": "f"}, "f")
        assert post(followers[0].url, "/tasks", {"title": "f"}, "f") == second

        # Writers with keys race a kill -9 of the leader; each retries its key until a definite answer.
        answers: dict[str, list] = {}
        started = threading.Barrier(21)

        def writer(i):
            key, body = f"w{i}", {"title": f"w{i}"}
            started.wait()
            got = []
            for attempt in range(60):
                status, result = post(cluster.nodes[(i + attempt) % 3].url, "/tasks", body, key, timeout=4.0)
                got.append((status, result))
                if status in (201, 422):
                    break
                time.sleep(0.1)  # a client's back-off between retries
            answers[key] = got
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        started.wait()
        leader.kill9()
        for t in threads:
            t.join(60)
        final = {key: got[-1] for key, got in answers.items()}
        assert all(status == 201 for status, _ in final.values()), final
        leader.start()
        cluster.wait_converged()
        for node in cluster.nodes:
            tasks = requests.get(node.url + "/tasks?consistency=stale", timeout=5).json()["tasks"]
            titles = sorted(t["title"] for t in tasks)
            assert titles == sorted(["via", "f"] + [f"w{i}" for i in range(20)]), titles
            by_title = {t["title"]: t["id"] for t in tasks}
            assert all(by_title[key] == body["id"] for key, (_, body) in final.items())
        # Every 2xx answer a key ever got names the same task.
        for key, got in answers.items():
            assert {body["id"] for status, body in got if status == 201} == {final[key][1]["id"]}
