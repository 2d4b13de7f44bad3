"""One nemesis run, the CI campaign, the long campaign, and the command line.

A run: start N nodes behind per-link proxies -> start the workload (8+ clients) and the
nemesis (seeded schedule) -> after ``duration`` seconds stop both -> heal everything ->
wait for an agreed leader -> barrier write + final linearizable reads (recorded in the
history) -> wait until every node's applied index is equal -> snapshot every replica
(stale reads) -> run the checkers:

  linearizability (per key, /set registers and task descriptions), lost writes, stale
  reads never showing unwritten values, convergence, one leader per term; plus no node
  process exiting by itself (ExitWatch), every damaged-file start answered correctly
  (disk faults), every hostile request answered correctly and none of them leaving data.

Command line (from the repository root):

  python -m tests.nemesis.campaign                        # the CI campaign (~3 min)
  python -m tests.nemesis.campaign --long --minutes 30    # random runs for 30 minutes
  python -m tests.nemesis.campaign --seed 42 --profile partition --nodes 5 --duration 18
                                                          # replay one run
  python -m tests.nemesis.campaign --check-history run/history.jsonl   # re-check offline

Every failure prints its seed, the schedule, what the nemesis did, what the checker saw,
and the replay command; run artefacts (history.jsonl, node logs, report.txt) stay in the
run's directory.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .churn import Churn
from .checkers import (CheckResult, check_conditional_writes, check_convergence, check_idempotent_retries,
                       check_lost_writes, check_one_leader_per_term, check_stale_reads, parse_leader_claims)
from .cluster import (ExitWatch, NemesisCluster, established_connections, http_call,
                      tail)
from .history import FAIL, OK, UNKNOWN, History, Op, format_summary, load_history, summarize
from .hostile import HostileTraffic, check_hostile_data
from .linearizability import check_history_linearizable
from .nemesis import Nemesis
from .proxy import ProxyNet
from .schedule import PROFILES, Schedule, make_schedule
from .workload import DEFAULT_MIX, LARGE_MIX, Workload, classify, normalize_result, shrink

BARRIER_KEY = "__nemesis_barrier__"
# After healing, a healthy cluster elects a leader and converges in a few seconds; give it
# this long for each recovery step before reporting NO RECOVERY.
RECOVERY_TIMEOUT = 20.0

# The bounded CI campaign: (profile, nodes, seconds of faults+workload). About 2.5 minutes
# in all on a 2-core machine, including start-up, healing and checking.
CI_RUNS = (
    ("kill", 3, 14),
    ("pause", 3, 14),
    ("partition", 5, 16),
    ("crash", 3, 16),
    ("net", 3, 12),
    ("mixed", 5, 18),
    ("disk", 3, 16),
    ("large", 3, 12),
    ("hostile", 3, 12),
    ("churn", 3, 12),
)
# Profiles run by a thread of their own next to the (empty) fault schedule: membership churn
# (churn.py) changes the configuration instead of breaking processes or links.
CHURN = "churn"
ALL_PROFILES = sorted(PROFILES) + [CHURN]


@dataclass
class RunConfig:
    seed: int
    profile: str
    nodes: int
    duration: float
    clients: int = 8
    workdir: Optional[Path] = None
    slow_clients: int = 4        # concurrent slow clients in runs with hostile traffic
    slow_connections: int = 520  # connections of a slowloris fault (a node takes 500 clients)

    def label(self) -> str:
        return f"{self.profile}-n{self.nodes}-seed{self.seed}"


@dataclass
class RunResult:
    config: RunConfig
    ok: bool
    schedule: Schedule
    checks: list = field(default_factory=list)
    problems: list = field(default_factory=list)     # run-level failures (no recovery...)
    summary: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)        # facts worth printing (not failures)
    nemesis_log: list = field(default_factory=list)
    workdir: Optional[Path] = None
    elapsed: float = 0.0
    report: str = ""


def derive_seed(base: int, index: int) -> int:
    return random.Random(f"{base}/{index}").randrange(1, 10**9)


def list_all_tasks(url: str, query: str = "", timeout: float = 8.0):
    """(first failed answer or None, {"tasks", "total", "index"}): every page of GET /tasks,
    following offsets (the server may cap a page)."""
    tasks, offset, first = [], 0, None
    while True:
        r = http_call(url, "GET", f"/tasks?{query}offset={offset}", timeout=timeout)
        if not (r.ok and isinstance(r.body, dict) and isinstance(r.body.get("tasks"), list)):
            return r, None
        first = first or r.body
        page = r.body["tasks"]
        tasks += page
        if not page or len(tasks) >= r.body.get("total", 0):
            return None, {"tasks": tasks, "total": r.body.get("total"),
                          "index": first.get("index")}
        offset += len(page)


def _final_list(history: History, url: str) -> Op:
    """The final linearizable listing of every task (possibly several pages: nothing
    writes any more), recorded as one read."""
    op = Op(id=history.new_id(), process=-1, f="list", node=url, consistency="linearizable")
    op.invoke = history.now()
    failed, listing = list_all_tasks(url)
    op.complete = history.now()
    if failed is not None:
        op.status = failed.status
        op.outcome, op.error = classify(failed, "list", True)
        if op.outcome == OK:           # a 2xx that is not a listing
            op.outcome, op.error = UNKNOWN, f"unexpected answer {str(failed.body)[:80]}"
    else:
        op.status, op.outcome, op.result = 200, OK, shrink(listing)
    history.record(op)
    return op


def _final_call(history: History, url: str, f: str, method: str, path: str, body=None,
                key=None, value=None, consistency=None) -> Op:
    op = Op(id=history.new_id(), process=-1, f=f, key=key, value=value, node=url,
            consistency=consistency)
    op.invoke = history.now()
    res = http_call(url, method, path, body, timeout=8.0)
    op.complete = history.now()
    op.status = res.status
    read = consistency is not None
    op.outcome, op.error = classify(res, f, read)
    if op.outcome == OK:
        op.result = normalize_result(f, res)
    history.record(op)
    return op


def _retry(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last is not None and last.outcome == OK:
            return last
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not succeed within {timeout}s; last: "
                       f"{last.short() if last else None}")


def _snapshot_node(url: str) -> Optional[dict]:
    st = http_call(url, "GET", "/status", timeout=3)
    failed, tasks = list_all_tasks(url, "consistency=stale&")
    jobs = http_call(url, "GET", "/jobs?consistency=stale", timeout=8)
    st2 = http_call(url, "GET", "/status", timeout=3)
    if not (st.ok and failed is None and jobs.ok and st2.ok):
        return None
    if st.body.get("applied_index") != st2.body.get("applied_index"):
        return None                         # changed while we looked: take it again
    return {"applied_index": st.body.get("applied_index"), "tasks": shrink(tasks["tasks"]),
            "jobs": shrink(jobs.body), "total": tasks["total"]}


def converge(cluster: NemesisCluster, timeout: float = 30.0):
    """Wait (polling) until every node answers with the same applied index equal to the
    leader's commit index, then snapshot every replica. Returns (snapshots, leader_url,
    problem or None)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        sts = cluster.statuses(timeout=2.0)
        lead = cluster.current_leader(sts)
        last = {cluster.urls[i]: (s.get("role"), s.get("term"), s.get("commit_index"),
                                  s.get("applied_index")) for i, s in sts.items()}
        if lead is not None and len(sts) == cluster.n:
            target = sts[lead].get("commit_index")
            if all(s.get("applied_index") == target for s in sts.values()):
                snaps = {}
                for i in range(cluster.n):
                    snap = _snapshot_node(cluster.urls[i])
                    if snap is None:
                        break
                    snaps[cluster.urls[i]] = snap
                if len(snaps) == cluster.n and \
                        len({s["applied_index"] for s in snaps.values()}) == 1:
                    return snaps, cluster.urls[lead], None
        time.sleep(0.1)
    # Time is up: take what we can, the checker reports the differences.
    snaps = {}
    for i in range(cluster.n):
        snap = _snapshot_node(cluster.urls[i])
        if snap is not None:
            snaps[cluster.urls[i]] = snap
    lead = cluster.current_leader()
    return (snaps, cluster.urls[lead] if lead is not None else None,
            f"replicas did not reach equal applied indexes within {timeout}s: {last}")


def leader_claims(cluster: NemesisCluster) -> list:
    claims = []
    for p in cluster.procs:
        try:
            text = p.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        claims += parse_leader_claims(text, p.log_path.name)
    return claims


def check_all(ops: list, final_jobs: Optional[dict], final_tasks: Optional[list],
              snapshots: Optional[dict], leader: Optional[str], claims: Optional[list]) -> list:
    checks = []
    lin = check_history_linearizable(ops)
    c = CheckResult("linearizability", ok=lin.ok,
                    info={"keys": lin.checked_keys, "ops": lin.checked_ops,
                          "undecided": len(lin.undecided)})
    if not lin.ok:
        c.errors.append(lin.explain())
    elif lin.undecided:
        c.info["note"] = "search budget exhausted on some keys (not a failure)"
    checks.append(c)
    if final_jobs is not None and final_tasks is not None:
        checks.append(check_lost_writes(ops, final_jobs, final_tasks,
                                        ignore_keys={BARRIER_KEY}))
    checks.append(check_stale_reads(ops))
    checks.append(check_idempotent_retries(ops, final_tasks))
    checks.append(check_conditional_writes(ops))
    if snapshots is not None:
        checks.append(check_convergence(snapshots, leader))
    if claims is not None:
        checks.append(check_one_leader_per_term(claims))
    return checks


def large_writes(ops) -> dict:
    """{size in characters: acknowledged writes} of the values ``shrink`` stood in for."""
    sizes: dict = {}
    for op in ops:
        if op.is_write and op.outcome == OK:
            value = op.value.get("description") if isinstance(op.value, dict) else op.value
            m = re.fullmatch(r"<(\d+) chars sha256:[0-9a-f]+>", value if isinstance(value, str) else "")
            if m:
                sizes[int(m.group(1))] = sizes.get(int(m.group(1)), 0) + 1
    return sizes


def run_checks(exits: Optional[ExitWatch], nem: Optional[Nemesis],
               hostile: Optional[HostileTraffic], final_jobs, final_tasks, snapshots,
               leader_url) -> list:
    """The checks that need the run's live objects rather than the history."""
    checks = []
    if exits is not None:
        c = CheckResult("node-exits", info={"unexpected": len(exits.exits)})
        for t, i, incarnation, rc, log_tail in exits.exits:
            c.fail(f"t={t:.3f} node{i} (start #{incarnation}) exited by itself with status "
                   f"{rc}; log tail:\n      " + log_tail.replace("\n", "\n      "))
        checks.append(c)
    if nem is not None and nem.disk_faults:
        c = CheckResult("disk-faults", info={"faults": nem.disk_faults})
        for finding in nem.disk_findings:
            c.fail(finding)
        checks.append(c)
    if nem is not None and nem.slowloris_faults:
        c = CheckResult("slow-clients", info={"attacks": nem.slowloris_faults})
        for finding in nem.slowloris_findings:
            c.fail(finding)
        checks.append(c)
    if hostile is not None:
        c = CheckResult("hostile-requests", info={"sent": len(hostile.sent)})
        for problem in hostile.problems:
            c.fail(problem)
        replicas = {url: (s.get("jobs"), s.get("tasks")) for url, s in (snapshots or {}).items()}
        if final_jobs is not None:
            replicas[f"final read via {leader_url}"] = (final_jobs, final_tasks)
        for problem in check_hostile_data(replicas, hostile.accepted_marks):
            c.fail(problem)
        c.info["answers"] = json.dumps(hostile.counts(), sort_keys=True)
        if hostile.problem_counts:
            c.info["wrong answers"] = json.dumps(hostile.problem_counts, sort_keys=True)
        checks.append(c)
    return checks


def proxied_cluster(workdir, n: int, net: ProxyNet, env: Optional[dict] = None
                    ) -> NemesisCluster:
    """A (not yet started) cluster whose every directed node-to-node link goes through a
    proxy of ``net``."""
    cluster = None

    def env_for(i):
        e = {"PICKLEDB_PEER_ROUTES": json.dumps(net.routes_for(cluster.urls[i]))}
        e.update(env or {})
        return e

    cluster = NemesisCluster(workdir, n, env=env_for)
    for i, src in enumerate(cluster.urls):
        for j, dst in enumerate(cluster.urls):
            if i != j:
                net.add_link(src, dst, cluster.ports[j])
    return cluster


def run_one(cfg: RunConfig, out=None) -> RunResult:
    """One complete run. Never raises for product misbehaviour: it is reported in the
    result (``ok=False``); infrastructure errors inside the run are reported too."""
    out = out or sys.stdout
    t_start = time.monotonic()
    sched = make_schedule(cfg.seed, "none" if cfg.profile == CHURN else cfg.profile, cfg.nodes, cfg.duration)
    sched.profile = cfg.profile
    workdir = Path(cfg.workdir) if cfg.workdir else Path(
        tempfile.mkdtemp(prefix=f"nemesis-{cfg.label()}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = RunResult(cfg, ok=False, schedule=sched, workdir=workdir)
    print(f"[nemesis] run {sched.header()} clients={cfg.clients} dir={workdir}", file=out,
          flush=True)
    (workdir / "schedule.txt").write_text(sched.format() + "\n")

    net = ProxyNet(seed=cfg.seed)
    cluster = None
    nem = None
    churn = None
    workload = None
    hostile = None
    exits = None
    history = History(workdir / "history.jsonl")
    final_jobs = final_tasks = snapshots = leader_url = claims = None
    try:
        env = {"PICKLEDB_SNAPSHOT_EVERY": str(sched.snapshot_every)} \
            if sched.snapshot_every else {}
        cluster = proxied_cluster(workdir, cfg.nodes, net, env)
        cluster.start()
        cluster.wait_for_leader(30)

        history.t0 = time.monotonic()
        exits = ExitWatch(cluster, history.now)
        exits.start()
        workload = Workload(cluster.urls, history, cfg.seed, clients=cfg.clients,
                            mix=LARGE_MIX if "large" in sched.traffic else DEFAULT_MIX)
        if "hostile" in sched.traffic:
            hostile = HostileTraffic(cluster, workload, history, cfg.seed,
                                     slow_clients=cfg.slow_clients)
        nem = Nemesis(cluster, net, sched, history.now,
                      slow_connections=cfg.slow_connections)
        workload.start()
        if hostile is not None:
            hostile.start()
        nem.start()
        if cfg.profile == CHURN:
            churn = Churn(cluster.urls, cfg.seed, history.now)
            churn.start()
        stop = threading.Event()
        stop.wait(cfg.duration)              # the run's length, not a race-hiding sleep
        nem.stop_event.set()
        nem.join(15)
        if churn is not None:
            churn.stop_event.set()
            churn.join(70)
            churn.restore()
        workload.stop()
        if hostile is not None:
            hostile.stop()
        nem.heal_all()

        # ---- recovery
        try:
            lead = cluster.wait_for_leader(RECOVERY_TIMEOUT)
        except TimeoutError as e:
            conns = {u: established_connections(p) for u, p in
                     zip(cluster.urls, cluster.ports)}
            result.problems.append(f"NO RECOVERY: {e}; established TCP connections to "
                                   f"each node's port: {conns}")
            lead = None
        if lead is not None:
            lurl = cluster.urls[lead]
            try:
                _retry(lambda: _final_call(history, lurl, "set", "POST", "/set",
                                           {"key": BARRIER_KEY, "value": "done"},
                                           key=BARRIER_KEY, value="done"),
                       RECOVERY_TIMEOUT, "barrier write")
                jobs_op = _retry(lambda: _final_call(history, lurl, "get_all", "GET", "/jobs",
                                                     consistency="linearizable"),
                                 RECOVERY_TIMEOUT, "final GET /jobs")
                tasks_op = _retry(lambda: _final_list(history, lurl), RECOVERY_TIMEOUT,
                                  "final GET /tasks")
                final_jobs = jobs_op.result
                final_tasks = tasks_op.result["tasks"]
                if tasks_op.result.get("total") != len(final_tasks):
                    result.problems.append(f"final GET /tasks: {len(final_tasks)} tasks in "
                                           f"its pages, but total={tasks_op.result.get('total')}")
            except TimeoutError as e:
                result.problems.append(f"NO RECOVERY: {e}")
            snapshots, leader_url, problem = converge(cluster, RECOVERY_TIMEOUT)
            if problem:
                result.problems.append(problem)
        claims = leader_claims(cluster)
        exits.stop()
        carried = sum(s["bytes"] for s in net.stats().values())
        if carried == 0:
            result.problems.append("PROXY NOT IN PATH: no node-to-node byte went through the "
                                   "proxies (is PICKLEDB_PEER_ROUTES honoured?), so network "
                                   "faults were not injected")
    except Exception:
        import traceback
        result.problems.append("RUN ERROR: " + traceback.format_exc())
    finally:
        if workload is not None and not workload.stop_event.is_set():
            try:
                workload.stop()
            except Exception:
                pass
        if hostile is not None and not hostile.stop_event.is_set():
            try:
                hostile.stop()
            except Exception:
                pass
        if exits is not None:
            exits.stop()
        if nem is not None:
            nem.stop_event.set()
        if churn is not None:
            churn.stop_event.set()
        if cluster is not None:
            cluster.stop()
        net.close()
        history.close()

    ops = history.ops
    result.summary = summarize(ops)
    result.nemesis_log = (list(nem.log) if nem else []) + (list(churn.log) if churn else [])
    if nem is not None and nem.error:
        result.problems.append("NEMESIS ERROR: " + nem.error)
    writes_ok = sum(1 for o in ops if o.is_write and o.outcome == OK and o.process >= 0)
    if ops and writes_ok == 0:
        result.problems.append("NO PROGRESS: not a single client write was acknowledged")
    if "large" in sched.traffic and ops:
        sizes = large_writes(ops)
        result.notes.append("large writes acknowledged, by size: "
                            + (", ".join(f"{n} x {k:,}" for k, n in sorted(sizes.items()))
                               or "none"))
        if not sizes:
            result.problems.append("NO LARGE WRITE: not a single large entry was acknowledged")
    if hostile is not None and hostile.error:
        result.problems.append("HOSTILE TRAFFIC ERROR: " + hostile.error)
    result.checks = check_all(ops, final_jobs, final_tasks, snapshots, leader_url, claims)
    result.checks += run_checks(exits, nem, hostile, final_jobs, final_tasks, snapshots,
                                leader_url)
    if churn is not None:
        c = CheckResult("membership-churn", info={"actions": len(churn.log)})
        for finding in churn.findings + ([f"churn thread crashed: {churn.error}"] if churn.error else []):
            c.fail(finding)
        if not churn.log:
            c.fail("no membership action was taken")
        result.checks.append(c)
    result.ok = not result.problems and all(c.ok for c in result.checks)
    result.elapsed = time.monotonic() - t_start
    result.report = format_report(result, cluster)
    (workdir / "report.txt").write_text(result.report + "\n")
    status = "PASS" if result.ok else "FAIL"
    print(f"[nemesis] {status} {cfg.label()} in {result.elapsed:.1f}s: "
          f"{result.summary['total'][OK]} ok / {result.summary['total'][FAIL]} fail / "
          f"{result.summary['total'][UNKNOWN]} unknown ops, "
          f"{len(result.nemesis_log)} nemesis actions"
          + "".join(f"; {n}" for n in result.notes), file=out, flush=True)
    if not result.ok:
        print(result.report, file=out, flush=True)
    return result


def format_report(r: RunResult, cluster: Optional[NemesisCluster]) -> str:
    lines = [("=" * 78),
             f"NEMESIS RUN {'PASSED' if r.ok else 'FAILED'}: {r.schedule.header()}",
             f"replay: {r.schedule.replay_command()}",
             f"artefacts: {r.workdir} (history.jsonl, node*.log, schedule.txt, report.txt)",
             "", r.schedule.format(), "", "nemesis actions:"]
    lines += ["  " + x for x in r.nemesis_log] or ["  (none)"]
    lines += ["", "operations:", format_summary(r.summary) if r.summary else "  (none)", ""]
    lines += r.notes
    for p in r.problems:
        lines.append("PROBLEM: " + p)
    for c in r.checks:
        lines.append(c.explain())
    if not r.ok and cluster is not None:
        for p in cluster.procs:
            lines.append(f"--- tail of {p.log_path}")
            lines.append(tail(p.log_path, 15))
    lines.append("=" * 78)
    return "\n".join(lines)


def _run_and_tidy(cfg: RunConfig, out) -> RunResult:
    """run_one; a passing run's directory is removed (its report was printed), a failing
    one is kept for inspection."""
    r = run_one(cfg, out)
    if r.ok and cfg.workdir:
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    return r


def ci_campaign(base_seed: Optional[int] = None, root: Optional[Path] = None,
                runs=CI_RUNS, out=None) -> list:
    out = out or sys.stdout
    if base_seed is None:
        base_seed = random.SystemRandom().randrange(1, 10**9)
    print(f"[nemesis] CI campaign base seed {base_seed}", file=out, flush=True)
    results = []
    for idx, (profile, n, dur) in enumerate(runs):
        cfg = RunConfig(derive_seed(base_seed, idx), profile, n, dur)
        if root:
            cfg.workdir = Path(root) / cfg.label()
        results.append(_run_and_tidy(cfg, out))
    return results


def long_campaign(minutes: float, base_seed: Optional[int] = None, root: Optional[Path] = None,
                  duration: float = 30.0, profiles=None, nodes=(3, 5), stop_on_failure=False,
                  out=None, slow_clients: int = 4) -> list:
    out = out or sys.stdout
    if base_seed is None:
        base_seed = random.SystemRandom().randrange(1, 10**9)
    profiles = list(profiles or ALL_PROFILES)
    rng = random.Random(base_seed)
    deadline = time.monotonic() + minutes * 60
    print(f"[nemesis] long campaign {minutes:g} min, base seed {base_seed}", file=out,
          flush=True)
    results = []
    idx = 0
    while time.monotonic() + duration + 20 < deadline or not results:
        profile = profiles[idx % len(profiles)]
        n = rng.choice(nodes)
        cfg = RunConfig(derive_seed(base_seed, idx), profile, n, duration,
                        slow_clients=slow_clients)
        if root:
            cfg.workdir = Path(root) / f"{idx:04d}-{cfg.label()}"
        r = _run_and_tidy(cfg, out)
        results.append(r)
        idx += 1
        if stop_on_failure and not r.ok:
            break
    return results


def print_summary(results: list, out=None):
    out = out or sys.stdout
    failed = [r for r in results if not r.ok]
    ops = sum(r.summary.get("total", {}).get(OK, 0) for r in results)
    print(f"[nemesis] {len(results) - len(failed)} passed, {len(failed)} failed "
          f"({ops} ok operations checked)", file=out)
    for r in failed:
        print(f"[nemesis]   FAILED {r.schedule.header()}\n"
              f"[nemesis]     replay: {r.schedule.replay_command()}\n"
              f"[nemesis]     report: {r.workdir}/report.txt", file=out)


def check_history_file(path) -> int:
    ops = load_history(path)
    print(format_summary(summarize(ops)))
    finals = [o for o in ops if o.process == -1 and o.outcome == OK]
    jobs = next((o.result for o in reversed(finals) if o.f == "get_all"), None)
    tasks = next((o.result["tasks"] for o in reversed(finals) if o.f == "list"), None)
    checks = check_all(ops, jobs, tasks, None, None, None)
    for c in checks:
        print(c.explain())
    return 0 if all(c.ok for c in checks) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.nemesis.campaign",
                                description="PickleDB Cluster fault-injection campaign")
    p.add_argument("--long", action="store_true", help="run random runs for --minutes")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--seed", type=int, help="run seed (single run) or base seed (campaigns)")
    p.add_argument("--profile", choices=ALL_PROFILES)
    p.add_argument("--nodes", type=int, choices=(3, 5))
    p.add_argument("--duration", type=float, help="seconds of workload+faults per run")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--slow-clients", type=int, default=4,
                   help="concurrent slow clients in runs with hostile traffic")
    p.add_argument("--workdir", type=Path, help="where run directories go")
    p.add_argument("--stop-on-failure", action="store_true")
    p.add_argument("--check-history", type=Path, help="re-run the history checkers on a file")
    a = p.parse_args(argv)
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt      # unwinds through run_one's cleanup: nodes are stopped
    signal.signal(signal.SIGTERM, _term)
    if a.check_history:
        return check_history_file(a.check_history)
    root = a.workdir or Path(tempfile.mkdtemp(prefix="nemesis-campaign-"))
    root.mkdir(parents=True, exist_ok=True)
    if a.long:
        results = long_campaign(a.minutes, a.seed, root, duration=a.duration or 30.0,
                                profiles=[a.profile] if a.profile else None,
                                nodes=(a.nodes,) if a.nodes else (3, 5),
                                stop_on_failure=a.stop_on_failure, slow_clients=a.slow_clients)
    elif a.profile or a.nodes or a.duration:
        if a.seed is None:
            a.seed = random.SystemRandom().randrange(1, 10**9)
        cfg = RunConfig(a.seed, a.profile or "mixed", a.nodes or 3, a.duration or 20.0,
                        clients=a.clients, workdir=root / "run", slow_clients=a.slow_clients)
        results = [run_one(cfg)]
    else:
        results = ci_campaign(a.seed, root)
    print_summary(results)
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
