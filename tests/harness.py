"""Real node processes on loopback for tests: start, kill -9, pause, restart, poll.

Every wait polls with a deadline; nothing sleeps to hide a race.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_SCRIPT = os.path.join(ROOT, "demo_follower.py")


# Test ports come from below the kernel's ephemeral range (32768 and up by default): a port the
# kernel hands out (bind to port 0) can be taken by any outgoing connection before the node that
# was given it binds it ("Address already in use"); ports from here are never handed out that way.
TEST_PORTS = range(10000, 20000)


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now, from TEST_PORTS."""
    pick = random.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        port = pick.choice(TEST_PORTS)
        if port in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
    return ports


def wait_for(predicate, timeout: float, message: str = "condition", interval: float = 0.05):
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message} (last: {last!r})")


class NodeProc:
    def __init__(self, cluster: "Cluster", index: int, port: int, join: list[str] | None = None):
        self.cluster, self.index, self.port = cluster, index, port
        self.url = f"http://127.0.0.1:{port}"
        self.id = f"127.0.0.1:{port}"  # the default node id
        self.join = join  # member URLs to join through, instead of --peers
        self.extra_args: list[str] = []
        self.data_dir = os.path.join(cluster.root, f"node_{port}")
        self.log_path = os.path.join(cluster.root, f"node_{port}.log")
        self.proc: subprocess.Popen | None = None
        self.session = requests.Session()

    @property
    def peers(self) -> list[str]:
        return [n.url for n in self.cluster.nodes if n is not self]

    def command(self) -> list[str]:
        c = self.cluster
        where = ["--join", ",".join(self.join)] if self.join else ["--peers", ",".join(self.peers)]
        cmd = [sys.executable, NODE_SCRIPT, "--port", str(self.port), "--host", "127.0.0.1",
               *where, "--data-dir", self.data_dir,
               "--heartbeat-interval", str(c.heartbeat), "--election-timeout", str(c.election)]
        if c.secret:
            cmd += ["--cluster-secret", c.secret]
        return cmd + self.extra_args

    def environment(self) -> dict:
        env = dict(os.environ)
        extra = self.cluster.env(self.index) if callable(self.cluster.env) else self.cluster.env
        env.update(extra or {})
        return env

    def start(self, wait: bool = True) -> "NodeProc":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                     env=self.environment())
        log.close()
        if wait:
            wait_for(lambda: self.status() is not None or self.proc.poll() is not None, 15,
                     f"node {self.url} to answer")
            assert self.proc.poll() is None, f"node {self.url} exited: {self.log_tail()}"
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> int | None:
        """Graceful stop (SIGTERM); returns the exit code."""
        if self.alive:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return None if self.proc is None else self.proc.returncode

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def status(self, timeout: float = 0.5) -> dict | None:
        try:
            r = self.session.get(self.url + "/status", timeout=timeout)
            return r.json() if r.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""


class Cluster:
    def __init__(self, root, n: int = 3, base_port: int | None = None, secret: str | None = None,
                 heartbeat: float = 0.1, election: float = 0.6, env=None):
        self.root = str(root)
        os.makedirs(self.root, exist_ok=True)
        self.heartbeat, self.election, self.secret, self.env = heartbeat, election, secret, env
        ports = list(range(base_port, base_port + n)) if base_port else free_ports(n)
        self.nodes = [NodeProc(self, i, p) for i, p in enumerate(ports)]

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def add(self, port: int | None = None, join: list[str] | None = None, start: bool = True) -> NodeProc:
        """A new node started empty with --join (default: through every current node)."""
        node = NodeProc(self, len(self.nodes), port or free_ports(1)[0], join=join or self.urls)
        self.nodes.append(node)
        if start:
            node.start()
        return node

    def node(self, i: int) -> NodeProc:
        return self.nodes[i]

    def by_url(self, url: str) -> NodeProc:
        return next(n for n in self.nodes if n.url == url)

    def start(self) -> "Cluster":
        for n in self.nodes:
            n.start(wait=False)
        for n in self.nodes:
            wait_for(lambda: n.status() is not None or not n.alive, 15, f"node {n.url} to answer")
            assert n.alive, f"node {n.url} exited: {n.log_tail()}"
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def leader(self) -> NodeProc | None:
        """The one node that says it leads the highest term, if every live node agrees on it."""
        views = [(n, n.status()) for n in self.nodes if n.alive]
        leaders = [(v["term"], n) for n, v in views if v and v["is_leader"]]
        if not leaders:
            return None
        return max(leaders, key=lambda x: x[0])[1]

    def wait_for_leader(self, timeout: float = 10.0, exclude: NodeProc | None = None) -> str:
        def find():
            node = self.leader()
            return node.url if node is not None and node is not exclude else None
        return wait_for(find, timeout, "a leader")

    def wait_converged(self, timeout: float = 15.0) -> dict:
        """Every live node has applied the same (leader's) commit index."""
        def check():
            views = [n.status() for n in self.nodes if n.alive]
            if not views or any(v is None for v in views):
                return None
            leaders = [v for v in views if v["is_leader"]]
            if len(leaders) != 1:
                return None
            top = leaders[0]["commit_index"]
            return leaders[0] if all(v["applied_index"] == top for v in views) else None
        return wait_for(check, timeout, "all nodes to apply the same index")
