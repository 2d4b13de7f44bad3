"""Node processes for the nemesis campaign, plus small HTTP helpers.

``NemesisCluster`` runs N real ``demo_follower.py`` processes on 127.0.0.1 through
``tests/harness.py``'s ``Cluster`` with the fast timings (heartbeat 0.1 s, election
0.6 s). The harness evaluates its ``env`` callable at every (re)start; this wrapper merges
the campaign's per-node env (``PICKLEDB_PEER_ROUTES`` to the proxies of the node's outgoing
links, ``PICKLEDB_SNAPSHOT_EVERY``) with a per-start ``extra_env``
(``PICKLEDB_CRASH_POINT``). Node output goes to the harness's per-node log file in append
mode, so every incarnation's ``ROLE leader term=T node=URL`` lines stay available to the
one-leader-per-term checker. Every process started here is stopped by ``stop()``.

Each node knows whether its process may exit now (killed or stopped by the nemesis, armed
with a crash point, started on damaged files); ``ExitWatch`` reports every other exit: a
node that died by itself.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import urlsplit

REPO_ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = REPO_ROOT / "demo_follower.py"
LOOPBACK = "127.0.0.1"


# ------------------------------------------------------------------------------ HTTP

class HttpResult:
    __slots__ = ("sent", "status", "body", "error", "elapsed")

    def __init__(self, sent, status=None, body=None, error=None, elapsed=0.0):
        self.sent = sent          # False: definitely never reached the server
        self.status = status
        self.body = body          # parsed JSON (or raw text if not JSON)
        self.error = error
        self.elapsed = elapsed

    @property
    def ok(self):
        return self.status is not None and 200 <= self.status < 300

    def __repr__(self):
        return f"HttpResult(sent={self.sent}, status={self.status}, error={self.error!r})"


def http_call(base_url: str, method: str, path: str, body=None, headers: Optional[dict] = None,
              timeout: float = 3.0, connect_timeout: float = 1.0) -> HttpResult:
    """One request on a fresh connection. Distinguishes 'never sent' (connect failed) from
    'sent, answer unknown' (reset or timeout after sending)."""
    u = urlsplit(base_url)
    t = time.monotonic()
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=connect_timeout)
    try:
        try:
            conn.connect()
        except OSError as e:
            return HttpResult(False, error=f"connect: {type(e).__name__}", elapsed=time.monotonic() - t)
        conn.sock.settimeout(timeout)
        all_headers = {"Connection": "close", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=all_headers)
            resp = conn.getresponse()
            raw = resp.read()
        except socket.timeout:
            return HttpResult(True, error="timeout", elapsed=time.monotonic() - t)
        except (OSError, http.client.HTTPException) as e:
            return HttpResult(True, error=f"{type(e).__name__}: {e}"[:120], elapsed=time.monotonic() - t)
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")[:300]
        return HttpResult(True, resp.status, parsed, elapsed=time.monotonic() - t)
    finally:
        conn.close()


def get_status(url: str, timeout: float = 0.8) -> Optional[dict]:
    r = http_call(url, "GET", "/status", timeout=timeout, connect_timeout=timeout)
    return r.body if r.status == 200 and isinstance(r.body, dict) else None


# ------------------------------------------------------------------------------ processes

def _import_harness():
    try:
        from tests import harness            # python -m tests.nemesis.campaign
    except ImportError:
        import harness                       # pytest (tests/conftest.py puts tests/ on sys.path)
    return harness


class _Proc:
    """One node: the harness's NodeProc plus per-start env, a pause flag and log markers."""

    def __init__(self, cluster: "NemesisCluster", hnode):
        self.cluster = cluster
        self.h = hnode
        self.index = hnode.index
        self.port = hnode.port
        self.url = hnode.url
        self.data_dir = Path(hnode.data_dir)
        self.log_path = Path(hnode.log_path)
        self.paused = False
        self.extra_env: dict = {}
        self.starts = 0
        self.may_exit = True          # False while running normally: an exit is a finding
        self.lock = threading.Lock()  # start/kill/stop versus ExitWatch's look

    def alive(self) -> bool:
        return self.h.alive

    def returncode(self):
        return None if self.h.proc is None else self.h.proc.poll()

    def start(self, extra_env: Optional[dict] = None, may_exit: bool = False):
        """Start without waiting (a node armed with a crash point may die before it
        answers); ``NemesisCluster.wait_ready`` polls when needed. ``may_exit``: the process
        is expected to exit by itself (crash points make that implicit)."""
        with self.lock:
            if self.alive():
                raise RuntimeError(f"node {self.index} already running")
            self.extra_env = dict(extra_env or {})
            self.starts += 1
            with open(self.log_path, "ab") as log:
                log.write(f"=== nemesis: start #{self.starts} of node{self.index} {self.url} "
                          f"extra_env={json.dumps(self.extra_env)} at {time.time():.3f}\n"
                          .encode())
            self.h.start(wait=False)
            self.may_exit = may_exit or "PICKLEDB_CRASH_POINT" in self.extra_env
            self.paused = False

    def kill9(self):
        with self.lock:
            self.may_exit = True
            self.h.kill9()
            self.paused = False

    def pause(self):
        if self.alive():
            self.h.pause()
            self.paused = True

    def resume(self):
        if self.alive():
            self.h.resume()
        self.paused = False

    def stop(self):
        """SIGTERM, then wait (the harness kill -9s after 10 s); returns the exit status."""
        with self.lock:
            self.may_exit = True
            rc = self.h.stop()
            self.paused = False
            return rc


class NemesisCluster:
    """N nodes from ``tests/harness.py``'s ``Cluster``; ``env(i)`` is evaluated at every
    (re)start, merged with the node's per-start ``extra_env``."""

    def __init__(self, workdir, n: int = 3, heartbeat: float = 0.1, election: float = 0.6,
                 env: Optional[Callable[[int], dict]] = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.n = n
        base_env = env or (lambda i: {})

        def env_for(i):
            e = {"PYTHONUNBUFFERED": "1"}
            e.update(base_env(i))
            e.update(self.procs[i].extra_env)
            return e

        harness = _import_harness()
        self.h = harness.Cluster(self.workdir, n=n, heartbeat=heartbeat, election=election,
                                 env=env_for)
        self.procs = [_Proc(self, hn) for hn in self.h.nodes]
        self.ports = [p.port for p in self.procs]
        self.urls = [p.url for p in self.procs]
    def node(self, i: int) -> _Proc:
        return self.procs[i]

    def index_of(self, url: str) -> Optional[int]:
        try:
            return self.urls.index(url)
        except ValueError:
            return None

    def start(self, ready_timeout: float = 30.0):
        for p in self.procs:
            p.start()
        self.wait_ready(ready_timeout)

    def wait_ready(self, timeout: float = 30.0, indexes=None):
        deadline = time.monotonic() + timeout
        pending = set(range(self.n) if indexes is None else indexes)
        while pending and time.monotonic() < deadline:
            for i in list(pending):
                p = self.procs[i]
                if not p.alive():
                    raise RuntimeError(f"node{i} exited with {p.returncode()} during startup; "
                                       f"see {p.log_path}:\n{tail(p.log_path)}")
                r = http_call(p.url, "GET", "/health", timeout=0.5, connect_timeout=0.3)
                if r.status == 200:
                    pending.discard(i)
            if pending:
                time.sleep(0.05)
        if pending:
            raise TimeoutError(f"nodes {sorted(pending)} not ready after {timeout}s")

    def statuses(self, timeout: float = 0.8) -> dict:
        """{index: /status dict} for the nodes that answered."""
        out = {}
        for i, p in enumerate(self.procs):
            if p.alive() and not p.paused:
                st = get_status(p.url, timeout)
                if st is not None:
                    out[i] = st
        return out

    def current_leader(self, statuses: Optional[dict] = None) -> Optional[int]:
        """The node claiming leadership in the highest term (None if none answers)."""
        sts = self.statuses() if statuses is None else statuses
        best = None
        for i, st in sts.items():
            if st.get("is_leader") or st.get("role") == "leader":
                if best is None or st.get("term", 0) > sts[best].get("term", 0):
                    best = i
        return best

    def wait_for_leader(self, timeout: float = 30.0) -> int:
        """A leader that every node answers about and agrees on (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        sts = {}
        while time.monotonic() < deadline:
            sts = self.statuses()
            lead = self.current_leader(sts)
            if lead is not None and len(sts) == self.n:
                url, term = self.urls[lead], sts[lead].get("term")
                if all(st.get("leader_url") == url and st.get("term") == term
                       for st in sts.values()):
                    return lead
            time.sleep(0.1)
        raise TimeoutError(f"no agreed leader within {timeout}s; nodes answering /status: "
                           f"{ {self.urls[i]: (s.get('role'), s.get('term'), s.get('leader')) for i, s in sts.items()} }")

    def stop(self):
        for p in self.procs:
            try:
                p.stop()
            except Exception:
                p.kill9()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class ExitWatch(threading.Thread):
    """Polls the node processes; every exit of a node that was not expected to exit (see
    ``_Proc.may_exit``) is recorded once per incarnation with its status and log tail."""

    def __init__(self, cluster: NemesisCluster, clock, interval: float = 0.2):
        super().__init__(name="exit-watch", daemon=True)
        self.cluster = cluster
        self.clock = clock
        self.interval = interval
        self.stop_event = threading.Event()
        self.exits: list = []          # (t, node index, incarnation, returncode, log tail)
        self._seen: set = set()

    def poll(self):
        for p in self.cluster.procs:
            with p.lock:
                if p.h.proc is None or p.alive() or p.may_exit or \
                        (p.index, p.starts) in self._seen:
                    continue
                self._seen.add((p.index, p.starts))
                self.exits.append((self.clock(), p.index, p.starts, p.returncode(),
                                   tail(p.log_path, 12)))

    def run(self):
        while not self.stop_event.wait(self.interval):
            self.poll()

    def stop(self):
        self.stop_event.set()
        if self.is_alive():
            self.join(5)
        self.poll()


def established_connections(port: int) -> int:
    """Established TCP connections whose local end is 127.0.0.1:port (from /proc/net/tcp),
    for failure diagnostics."""
    want = f"0100007F:{port:04X}"
    n = 0
    try:
        with open("/proc/net/tcp") as fh:
            for line in fh.readlines()[1:]:
                parts = line.split()
                if parts[1] == want and parts[3] == "01":
                    n += 1
    except OSError:
        return -1
    return n


def tail(path, n: int = 30) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - 8000))
            lines = fh.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError:
        return "<no log>"
