"""pdbctl as an operator runs it, against a real 3-node cluster: tasks, status, exit codes,
a dead node in the URL list, and a leader killed while `watch` and `tasks add` run."""
import json
import os
import subprocess
import sys
import threading

import pytest
import requests

from harness import ROOT, Cluster, wait_for

PDBCTL = os.path.join(ROOT, "pdbctl.py")
BASE_PORT = 27010  # 27010-27012; 27019 is never listened on
DEAD_URL = "http://127.0.0.1:27019"


def pdbctl(*args, urls=None, timeout=60, env=None):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PICKLEDB_")}
    if urls:
        environment["PICKLEDB_URLS"] = ",".join(urls)
    environment.update(env or {})
    return subprocess.run([sys.executable, PDBCTL, *args], capture_output=True, text=True, timeout=timeout,
                          env=environment)


def test_usage_errors_exit_2():
    for args in (["frobnicate"], ["tasks", "edit", "abc"], ["tasks", "add"], ["--url", "ftp://x", "status"],
                 ["--url", "http://127.0.0.1:99999", "status"], ["--timeout", "0", "status"],
                 ["tasks", "ls", "--limit", "-1"], ["watch", "--count", "x"]):
        r = pdbctl(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1].startswith("Error: "), args


def test_no_reachable_node_exits_1_in_one_line():
    r = pdbctl("--retry-for", "0.3", "tasks", "add", "x", urls=[DEAD_URL])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == f"error: no node could serve POST /tasks (last: {DEAD_URL}: Connection refused)\n"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with Cluster(tmp_path_factory.mktemp("pdbctl"), base_port=BASE_PORT) as c:
        c.wait_for_leader()
        yield c


@pytest.mark.cluster
def test_tasks_round_trip_through_a_dead_node(cluster):
    urls = [DEAD_URL] + cluster.urls  # the first node is down: pdbctl moves on
    added = pdbctl("--json", "tasks", "add", "buy milk", "--description", "2 l", urls=urls)
    assert added.returncode == 0, added.stderr
    task = json.loads(added.stdout)
    assert task["title"] == "buy milk" and task["description"] == "2 l" and task["completed"] is False

    r = pdbctl("tasks", "done", task["id"], urls=urls)
    assert r.returncode == 0 and r.stdout == f"updated {task['id']}: buy milk (done)\n"
    r = pdbctl("tasks", "edit", task["id"], "--title", "buy oat milk", "--not-done", urls=urls)
    assert r.returncode == 0 and r.stdout == f"updated {task['id']}: buy oat milk\n"
    listed = pdbctl("tasks", "ls", urls=urls).stdout.splitlines()
    assert listed[0].split() == ["ID", "DONE", "TITLE", "UPDATED"]
    assert any(line.startswith(task["id"]) and "buy oat milk" in line for line in listed[1:])
    from_json = json.loads(pdbctl("--json", "tasks", "ls", urls=urls).stdout)
    assert [t for t in from_json if t["id"] == task["id"]][0]["title"] == "buy oat milk"

    r = pdbctl("tasks", "rm", task["id"], urls=urls)
    assert r.returncode == 0 and r.stdout == f"removed {task['id']}\n"
    gone = pdbctl("tasks", "done", task["id"], urls=urls)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr == f"error: 404 not_found: task {task['id']} does not exist\n"


@pytest.mark.cluster
def test_status_table_and_json(cluster):
    r = pdbctl("status", urls=cluster.urls)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    leader = cluster.leader().url
    assert lines[0].startswith(f"leader: {leader}")
    assert lines[1].split() == ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    roles = sorted(line.split()[1] for line in lines[2:])
    assert roles == ["follower", "follower", "leader"]
    view = json.loads(pdbctl("--json", "status", urls=cluster.urls).stdout)
    assert view["cluster_leader"] == leader and len(view["nodes"]) == 3


@pytest.mark.cluster
def test_watch_and_writes_survive_a_killed_leader(cluster):
    """The leader dies (kill -9) while `watch` streams from it and `tasks add` runs in a loop:
    every add succeeds exactly once, and watch goes on on another node up to the last write."""
    leader = cluster.by_url(cluster.wait_for_leader())
    urls = [leader.url] + [u for u in cluster.urls if u != leader.url]  # both start on the leader
    watcher = subprocess.Popen([sys.executable, PDBCTL, "--json", "watch"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PICKLEDB_URLS": ",".join(urls)})
    events, results = [], []

    def read_events():
        for line in watcher.stdout:
            events.append(json.loads(line))
    reader = threading.Thread(target=read_events, daemon=True)
    reader.start()

    def index_of(event):
        return int(event["id"]) if event["id"] else event["data"]["index"]

    def add_tasks():
        for i in range(12):
            results.append((f"failover {i}", pdbctl("--json", "tasks", "add", f"failover {i}", urls=urls)))
    try:
        wait_for(lambda: events, 10, "watch to print the first event")
        first_index = index_of(events[0])
        writer = threading.Thread(target=add_tasks)
        writer.start()
        wait_for(lambda: len(results) >= 3, 30, "three writes before the failover")
        leader.kill9()
        writer.join(120)
        assert not writer.is_alive()
        for title, r in results:
            assert r.returncode == 0, (title, r.stderr)
        top = cluster.wait_converged()["commit_index"]
        wait_for(lambda: events and index_of(events[-1]) >= top, 15, "watch to reach the last write")
        indexes = [index_of(e) for e in events]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)  # no event twice
        assert indexes[-1] >= top > first_index
        assert watcher.poll() is None  # still following
    finally:
        watcher.kill()
        watcher.wait()
        if not leader.alive:
            leader.start()
    titles = [t["title"] for t in json.loads(pdbctl("--json", "tasks", "ls", urls=cluster.urls).stdout)]
    for title, r in results:
        assert titles.count(title) == 1, title
        assert json.loads(r.stdout)["title"] == title


@pytest.mark.cluster
def test_reads_retry_while_there_is_no_leader(cluster):
    """With two of three nodes down no write can commit: a bounded --retry-for ends in exit 1
    naming the last answer; once a node is back, the same command succeeds."""
    leader = cluster.by_url(cluster.wait_for_leader())
    others = [n for n in cluster.nodes if n is not leader]
    for n in others:
        n.stop()
    try:
        r = pdbctl("--retry-for", "1.5", "--timeout", "1", "tasks", "add", "nobody commits this", urls=cluster.urls)
        assert r.returncode == 1 and r.stderr.startswith("error: no node could serve POST /tasks (last: ")
        assert r.stderr.count("\n") == 1
    finally:
        for n in others:
            n.start()
    cluster.wait_for_leader()
    r = pdbctl("tasks", "add", "after recovery", urls=cluster.urls)
    assert r.returncode == 0 and r.stdout.startswith("added ")
    assert requests.get(cluster.urls[0] + "/tasks", timeout=10).status_code == 200
