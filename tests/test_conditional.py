"""Conditional updates: ETag on every task answer, If-Match checked when the write is applied."""
import threading

import requests

from harness import Cluster
from test_api import assert_error, client, node  # noqa: F401 (fixtures)


def test_task_answers_carry_their_version_as_etag(client):
    r = client.post("/tasks", json={"title": "t"})
    task = r.get_json()
    assert r.headers["ETag"] == '"1"'
    assert client.get(f"/tasks/{task['id']}").headers["ETag"] == '"1"'
    r = client.put(f"/tasks/{task['id']}", json={"title": "u"}, headers={"If-Match": '"1"'})
    assert r.status_code == 200 and r.headers["ETag"] == '"2"' and r.get_json()["version"] == 2
    assert client.get(f"/tasks/{task['id']}").headers["ETag"] == '"2"'
    r = client.put(f"/tasks/{task['id']}", json={"title": "v"})  # without If-Match: as before
    assert r.status_code == 200 and r.headers["ETag"] == '"3"'
    r = client.put(f"/tasks/{task['id']}", json={"title": "w"}, headers={"If-Match": 'W/"3", "1", "3"'})
    assert r.status_code == 200 and r.headers["ETag"] == '"4"'  # one strong tag of a list matches


def test_a_stale_if_match_is_412_with_the_current_task(client):
    task = client.post("/tasks", json={"title": "t"}).get_json()
    current = client.put(f"/tasks/{task['id']}", json={"title": "theirs"}).get_json()
    for header in ('"1"', 'W/"2"', '"abc"', '"7", "8"'):
        r = client.put(f"/tasks/{task['id']}", json={"title": "mine"}, headers={"If-Match": header})
        body = assert_error(r, 412, "precondition_failed")
        assert body["current"] == current and r.headers["ETag"] == '"2"'
    assert_error(client.delete(f"/tasks/{task['id']}", headers={"If-Match": '"1"'}), 412, "precondition_failed")
    assert client.get(f"/tasks/{task['id']}").get_json() == current
    r = client.delete(f"/tasks/{task['id']}", headers={"If-Match": '"2"'})
    assert r.status_code == 200 and r.get_json() == {"deleted": task["id"]}
    for method in ("PUT", "DELETE"):
        for header in ("*", '"2"'):
            r = client.open(f"/tasks/{task['id']}", method=method, json={"title": "x"} if method == "PUT" else None,
                            headers={"If-Match": header})
            assert assert_error(r, 412, "precondition_failed")["current"] is None
    assert assert_error(client.put("/tasks/" + "x" * 100, json={"title": "x"}, headers={"If-Match": "*"}),
                        412, "precondition_failed")["current"] is None
    task = client.post("/tasks", json={"title": "t"}).get_json()
    assert client.put(f"/tasks/{task['id']}", json={"title": "x"}, headers={"If-Match": "*"}).status_code == 200


def test_a_malformed_if_match_is_400(client):
    task = client.post("/tasks", json={"title": "t"}).get_json()
    for header in ("1", '"1', "W/1", '"1";"2"', "**", '"a b"', ",".join(['"1"'] * 33)):
        assert_error(client.put(f"/tasks/{task['id']}", json={"title": "x"}, headers={"If-Match": header}),
                     400, "invalid_request")
        assert_error(client.delete(f"/tasks/{task['id']}", headers={"If-Match": header}), 400, "invalid_request")
    assert client.get(f"/tasks/{task['id']}").get_json()["version"] == 1


def test_twenty_racing_writers_with_one_if_match_one_wins(tmp_path):
    with Cluster(tmp_path, n=3, base_port=24010) as cluster:
        leader = cluster.wait_for_leader()
        task = requests.post(leader + "/tasks", json={"title": "contended"}, timeout=5).json()
        etag = requests.get(leader + f"/tasks/{task['id']}", timeout=5).headers["ETag"]
        results = []
        start = threading.Barrier(20)

        def writer(i):
            start.wait()
            url = cluster.nodes[i % 3].url  # through followers too: the check is at apply time
            r = requests.put(url + f"/tasks/{task['id']}", json={"description": f"writer {i}"},
                             headers={"If-Match": etag}, timeout=10)
            results.append((r.status_code, r.json()))
        threads = [threading.Thread(target=writer, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        statuses = sorted(status for status, _ in results)
        assert statuses == [200] + [412] * 19, results
        winner = next(body for status, body in results if status == 200)
        assert winner["version"] == 2
        assert all(body["current"] == winner for status, body in results if status == 412)
        assert requests.get(leader + f"/tasks/{task['id']}", timeout=5).json() == winner
