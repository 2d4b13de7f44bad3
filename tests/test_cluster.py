"""Real node processes on loopback with fast timings (heartbeat 0.1 s, election 0.6 s)."""
import os
import subprocess
import sys
import threading

import pytest
import requests

from harness import ROOT, Cluster, wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def cluster(tmp_path):
    with Cluster(tmp_path / "c") as c:
        c.wait_for_leader()
        yield c


def create(url, title, timeout=10):
    r = requests.post(url + "/tasks", json={"title": title}, timeout=timeout)
    assert r.status_code == 201, r.text
    return r.json()


def titles(url, stale=False):
    r = requests.get(url + "/tasks" + ("?consistency=stale" if stale else ""), timeout=10)
    assert r.status_code == 200, r.text
    return {t["title"] for t in r.json()["tasks"]}


def test_failover_keeps_every_acknowledged_task_and_old_leader_catches_up(cluster):
    leader = cluster.by_url(cluster.wait_for_leader())
    acked = {create(leader.url, f"before-{i}")["title"] for i in range(20)}
    leader.kill9()
    new_leader = cluster.wait_for_leader(timeout=6 * cluster.election, exclude=leader)
    assert new_leader != leader.url
    assert acked <= titles(new_leader)
    acked |= {create(new_leader, f"after-{i}")["title"] for i in range(10)}
    # The old leader rejoins as a follower and catches up from the log.
    leader.start()
    wait_for(lambda: (lambda v: v and v["role"] == "follower" and v["leader_url"] == new_leader)(leader.status()),
             10, "old leader to rejoin as a follower of the new leader")
    cluster.wait_converged()
    assert acked <= titles(leader.url, stale=True)
    for n in cluster.nodes:
        assert titles(n.url, stale=True) == titles(new_leader)


def test_followers_forward_writes_and_linearizable_reads(cluster):
    leader_url = cluster.wait_for_leader()
    follower = next(n for n in cluster.nodes if n.url != leader_url)
    task = create(follower.url, "via follower")
    # A linearizable read on any node sees the write at once (the follower forwards it).
    for n in cluster.nodes:
        r = requests.get(f"{n.url}/tasks/{task['id']}", timeout=10)
        assert r.status_code == 200 and r.json()["title"] == "via follower"
    r = requests.put(f"{follower.url}/tasks/{task['id']}", json={"completed": True}, timeout=10)
    assert r.status_code == 200 and r.json()["completed"] is True and r.json()["version"] == 2
    r = requests.post(follower.url + "/set", json={"key": "k", "value": [1, {"a": None}]}, timeout=10)
    assert r.status_code == 200
    assert requests.get(follower.url + "/jobs", timeout=10).json() == {"k": [1, {"a": None}]}
    r = requests.delete(f"{follower.url}/tasks/{task['id']}", timeout=10)
    assert r.status_code == 200
    assert requests.delete(f"{follower.url}/tasks/{task['id']}", timeout=10).status_code == 404


def test_leader_without_a_majority_acknowledges_nothing(cluster):
    leader = cluster.by_url(cluster.wait_for_leader())
    create(leader.url, "while healthy")
    followers = [n for n in cluster.nodes if n is not leader]
    for f in followers:
        f.pause()
    try:
        results = []

        def attempt(i):
            try:
                r = requests.post(leader.url + "/tasks", json={"title": f"isolated-{i}"}, timeout=8)
                results.append(r.status_code)
            except requests.RequestException:
                results.append("timeout")
        threads = [threading.Thread(target=attempt, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results and not any(isinstance(s, int) and s < 300 for s in results), results
        # It steps down once it has not heard from a majority for an election timeout.
        wait_for(lambda: (lambda v: v and not v["is_leader"])(leader.status()), 5, "the leader to step down")
        r = requests.post(leader.url + "/tasks", json={"title": "refused"}, timeout=8)
        assert r.status_code == 503 and r.json()["error"] == "no_leader" and "Retry-After" in r.headers
        r = requests.get(leader.url + "/tasks?consistency=stale", timeout=5)
        assert r.status_code == 200 and "while healthy" in {t["title"] for t in r.json()["tasks"]}
    finally:
        for f in followers:
            f.resume()
    new_leader = cluster.wait_for_leader()
    cluster.wait_converged()
    # None of the unacknowledged writes may appear as acknowledged; the cluster works again.
    create(new_leader, "after heal")


def test_full_cluster_restart_keeps_everything(cluster):
    leader = cluster.wait_for_leader()
    acked = {create(leader, f"t{i}")["title"] for i in range(15)}
    requests.post(leader + "/set", json={"key": "answer", "value": 42}, timeout=10)
    for n in cluster.nodes:
        n.kill9()
    for n in cluster.nodes:
        n.start(wait=False)
    leader = cluster.wait_for_leader()
    assert acked <= titles(leader)
    assert requests.get(leader + "/jobs", timeout=10).json() == {"answer": 42}


def test_lagging_node_catches_up_from_a_snapshot(tmp_path):
    with Cluster(tmp_path / "c", env={"PICKLEDB_SNAPSHOT_EVERY": "25"}) as c:
        leader = c.by_url(c.wait_for_leader())
        lagging = next(n for n in c.nodes if n is not leader)
        lagging.stop()
        acked = {create(leader.url, f"x{i}")["title"] for i in range(80)}
        # The leader compacted its log past what the lagging node has.
        wait_for(lambda: (leader.status() or {}).get("snapshot_index", 0) >= 50, 10, "leader snapshot")
        lagging.start()
        c.wait_converged()
        assert (lagging.status() or {})["snapshot_index"] >= 50
        assert acked <= titles(lagging.url, stale=True)
        # And it restarts from its own snapshot plus log.
        lagging.kill9()
        lagging.start()
        c.wait_converged()
        assert acked <= titles(lagging.url, stale=True)


def test_cluster_secret_guards_node_to_node_endpoints(tmp_path):
    with Cluster(tmp_path / "c", secret="s3cret") as c:
        leader = c.wait_for_leader()
        create(leader, "secret works")
        for path in ("/heartbeat", "/replicate", "/raft/vote", "/raft/snapshot"):
            r = requests.post(leader + path, json={"type": "vote_req"}, timeout=5)
            assert r.status_code == 401, (path, r.text)
            r = requests.post(leader + path, json={}, headers={"X-Cluster-Secret": "nope"}, timeout=5)
            assert r.status_code == 403, (path, r.text)
        # Client endpoints need no secret.
        assert requests.get(leader + "/tasks", timeout=5).status_code == 200


def run_node(args, timeout=20, env=None):
    return subprocess.run([sys.executable, os.path.join(ROOT, "demo_follower.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def test_two_processes_cannot_share_a_data_dir_and_a_busy_port_is_reported(tmp_path):
    with Cluster(tmp_path / "c", n=1) as c:
        node = c.node(0)
        c.wait_for_leader()
        other = run_node(["--port", "1", "--peers", "", "--data-dir", node.data_dir])
        assert other.returncode == 2 and "in use by another process" in other.stderr
        busy = run_node(["--port", str(node.port), "--peers", "", "--data-dir", str(tmp_path / "other")])
        assert busy.returncode == 2 and "cannot listen" in busy.stderr


def test_non_loopback_address_needs_a_secret(tmp_path):
    r = run_node(["--host", "0.0.0.0", "--port", "4001", "--data-dir", str(tmp_path / "d")],
                 env={"PICKLEDB_CLUSTER_SECRET": ""})
    assert r.returncode == 2 and "non-loopback" in r.stderr


def test_storage_crash_after_append_before_fsync_loses_no_acknowledged_write(tmp_path):
    # Node 0 dies on its 30th WAL append, at the worst moment: written but not fsynced.
    env = lambda i: {"PICKLEDB_CRASH_POINT": "wal_before_fsync:30"} if i == 0 else {}
    with Cluster(tmp_path / "c", env=env) as c:
        c.wait_for_leader()  # else the writes can all fall in the first election and never reach 30
        acked, target = set(), c.node(1).url
        for i in range(400):  # batching decides how many writes make 30 appends; stop once it crashed
            if not c.node(0).alive and len(acked) >= 40:
                break
            try:
                r = requests.post(target + "/tasks", json={"title": f"c{i}"}, timeout=10)
            except requests.RequestException:
                continue
            if r.status_code == 201:
                acked.add(f"c{i}")
        wait_for(lambda: not c.node(0).alive, 10, "node 0 to hit its crash point")
        assert c.node(0).proc.returncode == 137
        c.env = {}
        c.node(0).start()
        c.wait_converged()
        for n in c.nodes:
            assert acked <= titles(n.url, stale=True)
