"""What the benchmark sections share: paths, wrk runs, the stack-limit server, clusters and small
number helpers. run.py and every section module import from here (never from each other)."""
from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import requests

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, BENCH)

from harness import Cluster, free_ports, wait_for  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
POST_LUA = os.path.join(BENCH, "lua", "post_task.lua")
GET_LUA = os.path.join(BENCH, "lua", "get_task.lua")
FAST = (0.1, 0.6)
DEFAULTS = (2.0, 5.0)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rnd(x, nd=3):
    return None if x is None else round(x, nd)


def summarize(rs: list[dict]) -> dict:
    """Medians of repeated wrk runs (errors are summed)."""
    out = {"rps": rnd(median(r["rps"] for r in rs), 1), "p50_ms": rnd(median(r["p50_ms"] for r in rs)),
           "p99_ms": rnd(median(r["p99_ms"] for r in rs)), "errors": sum(r["errors"] for r in rs)}
    if "cpu" in rs[0]:
        out["cpu"] = {p: rnd(median(r["cpu"][p] for r in rs), 2) for p in rs[0]["cpu"]}
    return out


# ------------------------------------------------------------------ process probes
def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def busy_cpu_fraction(seconds: float = 1.0) -> float:
    """Share of all cores busy over `seconds` (before the suite starts: other load on the machine)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def fsync_latency_ms(directory: str, n: int = 200) -> float:
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    times = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 200)
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return statistics.median(times) * 1000


def machine_info(workdir: str) -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            mem = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    fs = subprocess.run(["df", "-T", workdir], capture_output=True, text=True).stdout.splitlines()[-1].split()[1]
    wrk_version = subprocess.run([WRK, "-v"], capture_output=True, text=True).stdout.split("[")[0].strip()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": mem, "kernel": platform.release(),
            "python": platform.python_version(), "wrk": wrk_version, "data_fs": fs,
            "fsync_p50_ms": round(fsync_latency_ms(workdir, 100), 3),
            "load_avg_before": os.getloadavg()[0], "busy_cpu_before": round(busy_cpu_fraction(0.5), 3)}


# ------------------------------------------------------------------ load generation
def run_wrk(url: str, script: str, clients: int, duration: float, env: dict | None = None,
            pids: dict | None = None) -> dict:
    """One wrk run (one thread, `clients` connections). Returns rates, latencies, errors and the
    CPU used by each of `pids` ({name: pid}) over the run, as a share of one core. With
    BENCH_LIMIT in `env`, the run ends after that many responses (duration is then a cap)."""
    cmd = [WRK, "-t1", f"-c{clients}", f"-d{max(1, round(duration))}s", "--timeout", "10s", "-s", script, url]
    before = {k: cpu_seconds(p) for k, p in (pids or {}).items()}
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    lines = []
    try:
        for ln in proc.stdout:
            lines.append(ln)
            if ln.startswith("BENCH_LIMIT_REACHED"):
                proc.send_signal(signal.SIGINT)
        proc.wait(timeout=duration + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wall = time.monotonic() - t0
    out = subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), proc.stderr.read())
    proc.stderr.close()
    proc.stdout.close()
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line[len("BENCH_JSON "):])
    secs = r["duration_us"] / 1e6
    errors = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
    res = {"rps": r["requests"] / secs if secs else 0.0, "requests": r["requests"], "seconds": round(secs, 3),
           "p50_ms": r["lat_p50_us"] / 1000, "p99_ms": r["lat_p99_us"] / 1000,
           "max_ms": r["lat_max_us"] / 1000, "errors": errors}
    if pids:
        res["cpu"] = {k: round((cpu_seconds(p) - before[k]) / wall, 2) for k, p in pids.items()}
    return res


def post_n(url: str, n: int, clients: int = 64) -> None:
    """About n POST /tasks (count-bounded wrk; may overshoot by up to `clients`)."""
    if n <= 0:
        return
    clients = max(1, min(clients, n))
    run_wrk(url + "/tasks", POST_LUA, clients, duration=600, env={"BENCH_LIMIT": str(n)})


def total_tasks(url: str) -> int:
    r = requests.get(url + "/tasks?limit=1", timeout=30)
    r.raise_for_status()
    return r.json()["total"]


def fill_to(url: str, target: int, exact: bool = False) -> int:
    """Preload through the API with 64 concurrent clients (the leader batches their writes)."""
    have = total_tasks(url)
    if target - have > 128:
        post_n(url, target - have - (64 if exact else 0), clients=64)
        have = total_tasks(url)
    if exact:
        s = requests.Session()
        while have < target:
            s.post(url + "/tasks", json={"title": "fill"}, timeout=30).raise_for_status()
            have += 1
        have = total_tasks(url)
    elif target > have:
        post_n(url, target - have, clients=min(64, target - have))
        have = total_tasks(url)
    return have


def some_task_ids(url: str, n: int) -> list[str]:
    s = requests.Session()
    ids = []
    for i in range(n):
        r = s.post(url + "/tasks", json={"title": f"read target {i}", "description": "x" * 40}, timeout=30)
        r.raise_for_status()
        ids.append(r.json()["id"])
    return ids


# ------------------------------------------------------------------ servers
class Baseline:
    def __init__(self, workdir: str):
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = os.path.join(workdir, "baseline.log")
        self.proc = None

    def start(self) -> "Baseline":
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen([sys.executable, os.path.join(BENCH, "baseline_app.py"),
                                          "--port", str(self.port)], cwd=ROOT, stdout=logf,
                                         stderr=subprocess.STDOUT)

        def up():
            try:
                return requests.get(self.url + "/status", timeout=0.5).status_code == 200
            except requests.RequestException:
                return self.proc.poll() is not None
        wait_for(up, 15, "the baseline app")
        assert self.proc.poll() is None, "baseline app exited"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def node_pids(cluster: Cluster, leader_url: str) -> dict:
    pids, f = {}, 0
    for n in cluster.nodes:
        if n.alive:
            if n.url == leader_url:
                pids["leader"] = n.proc.pid
            else:
                f += 1
                pids[f"follower{f}"] = n.proc.pid
    return pids


def leader_view(cluster: Cluster) -> tuple[str, int]:
    url = cluster.wait_for_leader(timeout=15)
    return url, cluster.by_url(url).status()["term"]


def steady_run(cluster: Cluster, clients: int, duration: float, script: str = POST_LUA,
               env: dict | None = None) -> dict | None:
    """One wrk run (POST /tasks by default) against the leader; None if leadership moved meanwhile
    (on a loaded machine a 0.6 s election timeout can pass: the run would then measure forwarding)."""
    before = leader_view(cluster)
    run = run_wrk(before[0] + "/tasks", script, clients, duration, env=env, pids=node_pids(cluster, before[0]))
    return run if leader_view(cluster) == before else None


def concurrent_runs(runs: dict) -> dict | None:
    """Call each of `runs` ({name: function returning a run or None}) at the same time, each on its
    own thread, so whatever slows the machine meanwhile slows all of them: on a shared 2-core
    machine, runs one after the other scatter by +-10%. None if any of them returned None."""
    results: dict = {}
    threads = [threading.Thread(target=lambda k=name, f=run: results.__setitem__(k, f())) for name, run in runs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results if all(results.get(name) for name in runs) else None


def median_interval(ratios: list[float], confidence: float = 0.9, resamples: int = 2000) -> tuple[float, float]:
    """Bootstrap interval of the median ratio (fixed seed: the same runs give the same interval)."""
    rng = random.Random(13)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    tail = int(resamples * (1 - confidence) / 2)
    return medians[tail], medians[-tail - 1]


def leader_run(cluster: Cluster, clients: int, duration: float, attempts: int = 3) -> dict:
    """steady_run against whichever node leads, run again while leadership moves during it;
    run["redone"] counts the runs dropped."""
    for redone in range(attempts):
        run = steady_run(cluster, clients, duration)
        if run is not None:
            return {**run, "redone": redone}
        log(f"  the leader changed during a {clients}-client run; running it again against the new one")
    raise RuntimeError("leadership kept moving during the runs: the machine is too busy")


def start_and_lead(c: Cluster, timeout: float = 15) -> str:
    """Start `c` and return its leader's URL; a cluster that does not get there is stopped."""
    try:
        c.start()
        return c.wait_for_leader(timeout=timeout)
    except BaseException:
        c.stop()
        raise


def start_cluster(workdir: str, name: str, n: int, timings=FAST) -> tuple[Cluster, str]:
    c = Cluster(os.path.join(workdir, name), n=n, heartbeat=timings[0], election=timings[1])
    return c, start_and_lead(c, timeout=max(15, 4 * timings[1]))
