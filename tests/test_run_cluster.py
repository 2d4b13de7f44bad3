"""run_cluster.sh as a user runs it: start, status, start twice, busy port, stop, a restart that
would change the layout, and the usage errors of a first hour."""
import os
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
import requests

import node_cli
from harness import ROOT, free_ports, wait_for

pytestmark = pytest.mark.cluster


def consecutive_free_ports(n):
    for _ in range(50):
        base = free_ports(1)[0]
        if base + n > 65000:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@pytest.fixture
def checkout(tmp_path):
    """A copy of the scripts in a temporary directory, sharing the project's virtual environment."""
    for name in os.listdir(ROOT):
        if name.endswith(".py") or name in ("run_cluster.sh", "requirements.txt"):
            shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    os.symlink(os.path.join(ROOT, ".venv"), tmp_path / ".venv")
    yield tmp_path
    subprocess.run(["./run_cluster.sh", "stop"], cwd=tmp_path, capture_output=True, timeout=60)


def run(checkout, *args, timeout=120):
    return subprocess.run(["./run_cluster.sh", *args], cwd=checkout, capture_output=True, text=True, timeout=timeout)


def node_lines(status_text):
    return [line for line in status_text.splitlines() if " term=" in line or line.endswith("  down")]


def test_start_status_twice_stop(checkout):
    base = consecutive_free_ports(3)
    r = run(checkout, "--base-port", str(base), "--heartbeat-interval", "0.1", "--election-timeout", "0.6")
    assert r.returncode == 0, r.stdout + r.stderr
    for port in range(base, base + 3):
        assert f"http://127.0.0.1:{port}/" in r.stdout
        assert (checkout / "logs" / f"node_{port}.log").exists()  # written by the node (--log-file)
    # Right after start every follower has applied what the leader committed (its first entry).
    lines = node_lines(r.stdout)
    assert len(lines) == 3 and all("applied=1 " in line for line in lines), r.stdout
    status = run(checkout, "status").stdout
    assert status.count("leader    term=") == 1 and status.count("follower") == 2
    assert "catching up" not in status
    # The nodes share a generated secret: internal endpoints refuse strangers.
    assert requests.post(f"http://127.0.0.1:{base}/raft/vote", json={}, timeout=5).status_code == 401
    r = requests.post(f"http://127.0.0.1:{base + 1}/tasks", json={"title": "via script"}, timeout=10)
    assert r.status_code == 201

    again = run(checkout, "--base-port", str(base))
    assert again.returncode == 1 and "already running" in again.stderr
    helped = run(checkout, "stop", "--help")  # prints the usage and stops nothing
    assert helped.returncode == 0 and "rolling-restart" in helped.stdout
    assert run(checkout, "status").stdout.count("term=") == 3

    r = run(checkout, "stop")
    assert r.returncode == 0 and "stopped" in r.stdout
    wait_for(lambda: "down" in run(checkout, "status").stdout, 10, "nodes to be down")
    assert run(checkout, "status").stdout.count("down") == 3

    # Another layout over this cluster's data would change its membership without consensus.
    for layout in (["--nodes", "5", "--base-port", str(base)], ["--nodes", "2", "--base-port", str(base)]):
        r = run(checkout, *layout)
        assert r.returncode == 1 and "'./run_cluster.sh add'" in r.stderr and "remove PORT" in r.stderr
        assert not list(checkout.glob(".cluster/node_*.pid"))
    r = run(checkout)  # no layout given: the existing one
    assert r.returncode == 0 and len(node_lines(r.stdout)) == 3, r.stdout + r.stderr
    tasks = requests.get(f"http://127.0.0.1:{base + 2}/tasks", timeout=10).json()["tasks"]
    assert [t["title"] for t in tasks] == ["via script"]


def test_busy_port_starts_nothing(checkout):
    base = consecutive_free_ports(3)
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", base + 2))
    blocker.listen()
    try:
        r = run(checkout, "--base-port", str(base), "--nodes", "3")
        assert r.returncode == 1 and f"Port {base + 2} is already in use" in r.stderr
        assert not list(checkout.glob(".cluster/node_*.pid"))
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{base}/health", timeout=2)
    finally:
        blocker.close()


def test_bad_options_are_reported(checkout):
    """Usage errors: exit 2 with one `error:` line and a pointer to --help, never a traceback."""
    cases = {("--nodes", "zero"): "--nodes must be a positive integer",
             ("--frobnicate",): "unknown option: --frobnicate",
             ("--nodes",): "--nodes needs a value",
             ("--nodes", "--base-port", "5000"): "--nodes needs a value",
             ("--base-port", "70000"): "ports 70000-70002 go past 65535",
             ("--base-port", "65534"): "ports 65534-65536 go past 65535",
             ("--election-timeout", "-1"): "--heartbeat-interval and --election-timeout are seconds",
             ("stop", "now"): "'stop' takes no argument 'now'",
             ("restart",): "'restart' needs the PORT of a node",
             ("remove", "1", "2"): "'remove' takes one PORT",
             ("frobnicate",): "unknown command: frobnicate"}
    for args, message in cases.items():
        r = run(checkout, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(f"error: {message}") and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 2 and r.stdout == "", (args, r.stderr)
    assert not (checkout / ".cluster").exists()  # nothing was started or written


def pids(checkout):
    return {p.name: p.read_text().strip() for p in checkout.glob(".cluster/node_*.pid")}


def test_add_restart_remove_rolling_restart(checkout):
    """The launcher's membership commands on a running 3-node cluster, through the membership API."""
    base = consecutive_free_ports(4)
    r = run(checkout, "--base-port", str(base), "--heartbeat-interval", "0.1", "--election-timeout", "0.6")
    assert r.returncode == 0, r.stdout + r.stderr
    created = requests.post(f"http://127.0.0.1:{base}/tasks", json={"title": "kept"}, timeout=10)
    assert created.status_code == 201
    resize = run(checkout, "--nodes", "4", "--base-port", str(base))
    assert resize.returncode == 1 and "'./run_cluster.sh add'" in resize.stderr

    added = run(checkout, "add")
    assert added.returncode == 0 and f"Node {base + 3} joined the cluster as a voter" in added.stdout, added.stderr
    members = requests.get(f"http://127.0.0.1:{base}/cluster/members", timeout=10).json()["members"]
    assert sorted((m["url"], m["role"]) for m in members) == [
        (f"http://127.0.0.1:{p}", "voter") for p in range(base, base + 4)]
    assert (checkout / ".cluster" / "ports").read_text().split() == [str(p) for p in range(base, base + 4)]

    before = pids(checkout)
    restarted = run(checkout, "restart", str(base + 3))  # a joined node comes back with --join, ignored
    assert restarted.returncode == 0 and len(node_lines(restarted.stdout)) == 4, restarted.stderr
    assert "catching up" not in restarted.stdout
    assert pids(checkout)[f"node_{base + 3}.pid"] != before[f"node_{base + 3}.pid"]
    task = requests.get(f"http://127.0.0.1:{base + 3}/tasks?consistency=stale", timeout=10).json()["tasks"]
    assert [t["title"] for t in task] == ["kept"]

    removed = run(checkout, "remove", str(base + 3))
    assert removed.returncode == 0 and f"Node {base + 3} (127.0.0.1:{base + 3}) was removed" in removed.stdout
    assert len(node_lines(removed.stdout)) == 3 and not (checkout / "data" / f"node_{base + 3}").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{base + 3}/health", timeout=2)
    members = requests.get(f"http://127.0.0.1:{base}/cluster/members", timeout=10).json()["members"]
    assert len(members) == 3

    leader_before = requests.get(f"http://127.0.0.1:{base}/status", timeout=10).json()["leader"]
    before = pids(checkout)
    rolled = run(checkout, "rolling-restart")
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    leader_port = leader_before.rsplit(":", 1)[1]
    # Followers first, the leader last, after it handed leadership over.
    order = [line.split()[2].rstrip(".") for line in rolled.stdout.splitlines() if line.startswith("Restarting node")]
    assert sorted(order) == [str(p) for p in range(base, base + 3)] and order[-1] == leader_port
    assert rolled.stdout.index("Transferring leadership") < rolled.stdout.index(f"Restarting node {leader_port}")
    after = pids(checkout)
    assert set(after) == set(before) and all(after[k] != before[k] for k in before)
    lines = node_lines(rolled.stdout)
    assert len(lines) == 3 and "catching up" not in rolled.stdout
    assert requests.get(f"http://127.0.0.1:{base}/status", timeout=10).json()["leader"] != leader_before
    tasks = requests.get(f"http://127.0.0.1:{base + 1}/tasks", timeout=10).json()["tasks"]
    assert [t["title"] for t in tasks] == ["kept"]


def test_systemd_unit_passes_systemd_analyze(tmp_path, monkeypatch):
    """docs/pickledb-node.service: `systemd-analyze verify` has nothing to say about it, and its
    ExecStart is a command line the node accepts."""
    tool = shutil.which("systemd-analyze")
    assert tool, "systemd-analyze is not installed (apt-get install -y systemd)"
    text = open(os.path.join(ROOT, "docs", "pickledb-node.service")).read()
    lines = text.splitlines()
    for setting in ("Type=simple", "Restart=on-failure", "KillSignal=SIGTERM", "User=pickledb",
                    "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert setting in lines, setting
    # verify checks that ExecStart's program exists: point the example's paths at this checkout.
    local = text.replace("/opt/pickledb/.venv/bin/python", sys.executable).replace("/opt/pickledb", ROOT)

    def verify(unit_text):
        unit = tmp_path / "pickledb-node.service"
        unit.write_text(unit_text)
        r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        return r.returncode, r.stdout + r.stderr
    assert verify(local) == (0, "")
    code, said = verify(local.replace("Restart=on-failure", "Restart=sometimes"))  # the check can fail
    assert "Failed to parse service restart specifier" in said

    start = text.index("ExecStart=") + len("ExecStart=")
    command = shlex.split(text[start:text.index("\nExecReload=")].replace("\\\n", " "))
    assert command[:2] == ["/opt/pickledb/.venv/bin/python", "/opt/pickledb/demo_follower.py"]
    monkeypatch.setenv("PICKLEDB_CLUSTER_SECRET", "from /etc/pickledb/node.env")
    args = node_cli.parse_args(command[2:], 4001)
    assert (args.host, args.port, args.advertise_url, args.log_format) == ("0.0.0.0", 4000, "http://10.0.0.1:4000", "json")
