"""pdbctl as an operator runs it, against a real 3-node cluster: tasks, status, members, leader
transfer, exit codes, a dead node in the URL list, a leader killed while `watch` and `tasks add`
run, backup and restore into a new cluster, and a token used against a node with --auth-file."""
import json
import os
import subprocess
import sys
import threading

import pytest
import requests

from harness import ROOT, Cluster, NodeProc, wait_for

PDBCTL = os.path.join(ROOT, "pdbctl.py")
BASE_PORT = 27010  # the cluster: 27010-27012; a joining node 27013, others 27014-27015
DEAD_URL = "http://127.0.0.1:27019"  # never listened on


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
    leader = cluster.leader()
    assert lines[0].startswith(f"leader: 127.0.0.1:{leader.port} ({leader.url})   cluster: ")
    assert lines[1].split() == ["NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG"]
    roles = sorted(line.split()[1] for line in lines[2:])
    assert roles == ["follower", "follower", "leader"]
    view = json.loads(pdbctl("--json", "status", urls=cluster.urls).stdout)
    assert view["cluster_leader"] == f"127.0.0.1:{leader.port}" and len(view["nodes"]) == 3


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
        return int(event["id"])

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
        changes = [e for e in events if e["event"] == "change"]
        indexes = [index_of(e) for e in changes]
        assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)  # resumed, none twice
        created = [e["data"]["task"]["title"] for e in changes if e["data"]["op"] == "create"]
        assert sorted(created) == sorted(title for title, _ in results)  # every write, exactly once
        assert index_of(events[-1]) >= top > first_index
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
def test_writes_give_up_after_retry_for(cluster):
    """With two of three nodes down no write can commit: a bounded --retry-for ends in exit 1
    naming the last answer; once the nodes are back, the same command succeeds."""
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


class JoiningNode(NodeProc):
    """A node started empty with --join instead of --peers."""

    def __init__(self, cluster, port, join_urls):
        super().__init__(cluster, len(cluster.nodes), port)
        self.join_urls = join_urls

    def command(self):
        cmd = super().command()
        at = cmd.index("--peers")
        cmd[at:at + 2] = ["--join", ",".join(self.join_urls)]
        return cmd


@pytest.mark.cluster
def test_members_list_add_remove(cluster):
    urls = cluster.urls
    leader = cluster.by_url(cluster.wait_for_leader())
    follower_first = [u for u in urls if u != leader.url] + [leader.url]
    listed = pdbctl("members", urls=follower_first)  # progress comes from the leader's view
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["ID", "URL", "ROLE", "MATCH", "REACHABLE"] and lines[-1] == "(* leader)"
    rows = [line.split() for line in lines[1:-1]]
    assert [row[0] for row in rows if row[1] == "*"] == [f"127.0.0.1:{leader.port}"]
    assert sorted(row[-4] for row in rows) == urls
    assert all(row[-3] == "voter" and row[-2].isdigit() and row[-1] == "yes" for row in rows), lines

    extra = JoiningNode(cluster, BASE_PORT + 3, urls)
    try:
        extra.start()
        def voter():
            view = json.loads(pdbctl("--json", "members", urls=urls).stdout)
            return any(m["url"] == extra.url and m["role"] == "voter" for m in view["members"])
        wait_for(voter, 30, "the joining node to become a voter")
        again = pdbctl("members", "add", extra.url, urls=urls)  # already a member with this URL: idempotent
        assert again.returncode == 0 and again.stdout == f"member 127.0.0.1:{extra.port} at {extra.url} is a voter\n"
        removed = pdbctl("members", "remove", f"127.0.0.1:{extra.port}", urls=urls)
        assert removed.returncode == 0 and removed.stdout == f"removed 127.0.0.1:{extra.port}\n", removed.stderr
        view = json.loads(pdbctl("--json", "members", urls=urls).stdout)
        assert sorted(m["url"] for m in view["members"]) == sorted(urls)
        gone = pdbctl("members", "remove", f"127.0.0.1:{extra.port}", urls=urls)
        assert gone.returncode == 1 and gone.stderr.startswith("error: 404 unknown_member: ")
    finally:
        extra.stop()


@pytest.mark.cluster
def test_leader_transfer(cluster):
    leader = cluster.by_url(cluster.wait_for_leader())
    target = next(n for n in cluster.nodes if n is not leader)
    moved = pdbctl("leader", "transfer", f"127.0.0.1:{target.port}", urls=cluster.urls)
    assert moved.returncode == 0 and moved.stdout == f"leader: 127.0.0.1:{target.port} ({target.url})\n", moved.stderr
    assert cluster.wait_for_leader() == target.url
    unknown = pdbctl("leader", "transfer", "127.0.0.1:1", urls=cluster.urls)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: 404 unknown_member: ")


def single_node(tmp_path, port, *extra):
    """A one-node cluster (no peers) on `port`, started with `extra` flags."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "demo_follower.py"), "--port", str(port),
                             "--peers", "", "--data-dir", str(tmp_path / f"node_{port}"),
                             "--heartbeat-interval", "0.1", "--election-timeout", "0.6", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_serving(url):
    def ready():
        try:
            return requests.get(url + "/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    wait_for(ready, 20, f"{url} to be ready")


@pytest.mark.cluster
def test_backup_then_restore_into_a_new_cluster(cluster, tmp_path):
    urls = cluster.urls
    for i in range(3):
        assert pdbctl("tasks", "add", f"kept {i}", urls=urls).returncode == 0
    before = json.loads(pdbctl("--json", "tasks", "ls", urls=urls).stdout)
    path = tmp_path / "cluster.backup"
    saved = pdbctl("--json", "backup", str(path), urls=[DEAD_URL] + urls)
    assert saved.returncode == 0, saved.stderr
    summary = json.loads(saved.stdout)
    assert summary["tasks"] == len(before) and summary["file"] == str(path) and len(summary["sha256"]) == 64
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.backup"]  # no temporary file left

    damaged = tmp_path / "damaged.backup"
    damaged.write_bytes(path.read_bytes()[:-100])
    refused = pdbctl("restore", str(damaged), "--data-dir", str(tmp_path / "refused"),
                     "--node-url", "http://127.0.0.1:27015")
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: backup {damaged} is refused: ")
    assert not (tmp_path / "refused").exists()

    restored = pdbctl("restore", str(path), "--data-dir", str(tmp_path / "node_27015"),
                      "--node-url", "http://127.0.0.1:27015")
    assert restored.returncode == 0 and f"restored {len(before)} tasks" in restored.stdout, restored.stderr
    node = single_node(tmp_path, 27015)
    try:
        wait_serving("http://127.0.0.1:27015")
        after = json.loads(pdbctl("--json", "tasks", "ls", urls=["http://127.0.0.1:27015"]).stdout)
        assert after == before
        assert json.loads(pdbctl("--json", "status", urls=["http://127.0.0.1:27015"]).stdout)["cluster_id"] \
            != json.loads(pdbctl("--json", "status", urls=urls).stdout)["cluster_id"]
    finally:
        node.terminate()
        node.wait(10)


@pytest.mark.cluster
def test_token_add_then_use_it(tmp_path):
    auth_file = tmp_path / "auth.json"
    made = pdbctl("token", "add", "ops-bot", "write", "--auth-file", str(auth_file))
    assert made.returncode == 0 and "added to" in made.stderr, made.stderr
    token = made.stdout.strip()
    assert len(made.stdout.splitlines()) == 1 and token not in auth_file.read_text()
    twice = pdbctl("token", "add", "ops-bot", "read", "--auth-file", str(auth_file))
    assert twice.returncode == 1 and "already has a token named 'ops-bot'" in twice.stderr
    bad = pdbctl("token", "add", "ops-bot", "root", "--auth-file", str(auth_file))
    assert bad.returncode == 2

    url = "http://127.0.0.1:27014"
    node = single_node(tmp_path, 27014, "--auth-file", str(auth_file))
    try:
        wait_serving(url)
        denied = pdbctl("tasks", "add", "no token", urls=[url])
        assert denied.returncode == 1 and denied.stderr.startswith("error: 401 unauthorized: ")
        allowed = pdbctl("tasks", "add", "with token", urls=[url], env={"PICKLEDB_TOKEN": token})
        assert allowed.returncode == 0 and allowed.stdout.startswith("added "), allowed.stderr
        flag = pdbctl("--token", token, "--json", "tasks", "ls", urls=[url])
        assert [t["title"] for t in json.loads(flag.stdout)] == ["with token"]
        admin_only = pdbctl("--token", token, "leader", "transfer", urls=[url])
        assert admin_only.returncode == 1 and admin_only.stderr.startswith("error: 403 forbidden: ")
    finally:
        node.terminate()
        node.wait(10)
