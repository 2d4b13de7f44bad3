"""Real node processes with fast timings (heartbeat 0.1 s, election 0.6 s): a non-ASCII cluster
secret, deep JSON through a follower, and large entries under concurrent load."""
import threading

import pytest
import requests

from harness import Cluster, wait_for

pytestmark = pytest.mark.cluster


def nested(levels):
    value = 0
    for _ in range(levels):
        value = [value]
    return value


def terms(cluster):
    return {n.url: (n.status() or {}).get("term") for n in cluster.nodes}


def test_a_non_ascii_cluster_secret_elects_a_leader_and_commits(tmp_path):
    with Cluster(tmp_path / "c", secret="sécret-ключ") as c:
        leader = c.wait_for_leader(timeout=10)
        follower = next(n for n in c.nodes if n.url != leader)
        r = requests.post(follower.url + "/tasks", json={"title": "via a follower"}, timeout=10)
        assert r.status_code == 201, r.text
        c.wait_converged()
        wrong = {"X-Cluster-Secret": "sécret".encode(), "Content-Type": "application/json",
                 "X-PickleDB-Peer": "1"}
        r = requests.post(leader + "/raft/vote", data=b"{}", headers=wrong, timeout=5)
        assert r.status_code == 403 and r.json()["error"] == "forbidden"


def test_deep_json_through_a_follower_kills_no_node(tmp_path):
    with Cluster(tmp_path / "c") as c:
        leader = c.wait_for_leader()
        follower = next(n for n in c.nodes if n.url != leader)
        before = terms(c)
        # Beyond what orjson encodes at all, and deep enough to overrun orjson 3.11.4's buffer.
        for levels in (300, 100, 45):
            r = requests.post(follower.url + "/set", json={"key": "deep", "value": nested(levels)}, timeout=10)
            assert r.status_code == 400 and r.json()["error"] == "invalid_request", (levels, r.text)
        assert all(n.alive for n in c.nodes)
        r = requests.post(follower.url + "/set", json={"key": "fine", "value": nested(20)}, timeout=10)
        assert r.status_code == 200, r.text
        c.wait_converged()
        assert c.leader().url == leader and terms(c) == before


def test_large_entries_keep_every_follower_caught_up(tmp_path):
    """A /set of about 1 MiB and 32 clients writing tasks with 10,000-character descriptions:
    AppendEntries are batched by bytes, so no message is refused and no follower falls behind."""
    clients, per_client = 32, 8
    with Cluster(tmp_path / "c") as c:
        leader_url = c.wait_for_leader()
        leader = c.by_url(leader_url)
        before = terms(c)
        statuses, lock = [], threading.Lock()

        def write_tasks(i):
            with requests.Session() as s:
                for j in range(per_client):
                    r = s.post(leader_url + "/tasks", json={"title": f"t{i}-{j}", "description": "d" * 10_000},
                               timeout=30)
                    with lock:
                        statuses.append(r.status_code)
        threads = [threading.Thread(target=write_tasks, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        big = b'{"key": "big", "value": "' + b"v" * (1024 * 1024 - 100) + b'"}'
        r = requests.post(leader_url + "/set", data=big, headers={"Content-Type": "application/json"}, timeout=30)
        for t in threads:
            t.join()
        assert r.status_code == 200, r.text[:300]
        assert statuses == [201] * clients * per_client, sorted(set(statuses))

        def caught_up():
            view = leader.status()
            peers = view and view["peers"].values()
            return view if peers and all(p["match_index"] == view["last_log_index"] for p in peers) else None
        view = wait_for(caught_up, 10, "every follower to hold the leader's whole log")
        assert view["is_leader"] and terms(c) == before
        assert view["transport"]["refused"] == {n.id: 0 for n in c.nodes if n is not leader}
