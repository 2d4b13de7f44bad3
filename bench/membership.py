"""Membership benchmarks (a section of bench/run.py): how long a new node takes to join a loaded
cluster and become a voter, and the longest write gap of a rolling restart.

    section(cfg, workdir=None) -> dict   with cfg from bench/run.py's config() (scale_big,
                                         failover_clients; workdir: where data dirs go)

join: a 3-node cluster (heartbeat 0.1 s / election 0.6 s) holding cfg.scale_big tasks; a fresh
  node started with --join; seconds from its process start until the leader lists it as a
  voter (it received the snapshot and the log tail as a learner, then was promoted). Goal <= 5 s.
rolling_restart: the same timings, continuous writes from cfg.failover_clients clients spread
  over the nodes; each node in turn (followers first, the leader last) gets SIGTERM (a leader
  hands leadership over first) and is started again; per node the longest stretch without an
  acknowledged write around its restart. Goal <= 0.3 s per node; and every acknowledged write is
  in the final state (count check: total tasks >= tasks before + acknowledged writes).
"""
from __future__ import annotations

import os
import tempfile
import time

import requests

from common import FAST, fill_to, total_tasks
from failover import WriteLoad
from harness import Cluster, wait_for


def log(msg: str) -> None:
    print(f"[bench membership] {msg}", flush=True)


def voters(url: str) -> set[str]:
    try:
        r = requests.get(url + "/cluster/members", timeout=5)
        return {m["id"] for m in r.json()["members"] if m["role"] == "voter"} if r.status_code == 200 else set()
    except (requests.RequestException, ValueError):
        return set()


def bench_join(cfg, workdir: str) -> dict:
    tasks = cfg.scale_big
    c = Cluster(os.path.join(workdir, "membership-join"), n=3, heartbeat=FAST[0], election=FAST[1])
    try:
        c.start()
        leader = c.wait_for_leader(timeout=15)
        log(f"join: filling to {tasks} tasks")
        have = fill_to(leader, tasks)
        c.wait_converged(timeout=120)
        start = time.monotonic()
        node = c.add(join=[c.nodes[0].url], start=False)
        node.start(wait=False)
        wait_for(lambda: node.id in voters(c.wait_for_leader(timeout=15)), 120, "the new node to vote")
        took = time.monotonic() - start
        applied = node.status()["applied_index"]
        log(f"join: a new node voted after {took:.2f} s at {have} tasks")
        return {"tasks": have, "join_to_voter_s": round(took, 3), "applied_index": applied, "goal_s": 5.0}
    finally:
        c.stop()


def longest_gap(load: WriteLoad, t0: float, t1: float) -> float | None:
    """The longest stretch without an acknowledged write from `t0` (the stop) to `t1` (the node
    is back and caught up): wherever it falls, e.g. at the hand-over after the SIGTERM."""
    acks = sorted(d for s, d, ok in list(load.records) if ok)
    before = [d for d in acks if d <= t0]
    inside = [before[-1] if before else t0] + [d for d in acks if t0 < d <= t1]
    return round(max((b - a for a, b in zip(inside, inside[1:])), default=t1 - inside[0]), 4)


def wait_caught_up(c: Cluster, node, timeout: float = 30.0) -> None:
    """The restarted node has applied what the leader had committed once it was back. (Not "every
    node at the same index": under the continuous write load that moment may never be seen.)"""
    def leader_commit():
        leader = c.leader()
        view = leader.status() if leader is not None else None
        return view["commit_index"] if view else None
    target = wait_for(leader_commit, timeout, "a leader's commit index")
    wait_for(lambda: (node.status() or {}).get("applied_index", -1) >= target, timeout, f"{node.id} to catch up")


def bench_rolling_restart(cfg, workdir: str) -> dict:
    c = Cluster(os.path.join(workdir, "membership-rolling"), n=3, heartbeat=FAST[0], election=FAST[1])
    try:
        c.start()
        leader = c.wait_for_leader(timeout=15)
        before = total_tasks(leader)
        load = WriteLoad(c.urls, clients=cfg.failover_clients, timeout=5.0).start()
        per_node = []
        try:
            time.sleep(0.5)  # writes flowing before the first restart
            leader_url = c.wait_for_leader(timeout=15)
            order = [n for n in c.nodes if n.url != leader_url] + [c.by_url(leader_url)]
            for node in order:
                was_leader = node.url == c.wait_for_leader(timeout=15)
                t_stop = time.monotonic()
                node.stop()
                node.start()
                wait_caught_up(c, node)
                time.sleep(0.3)  # some acknowledged writes after it is back
                t_end = time.monotonic()
                res = load.analyse(t_stop, t_end)
                res.update(node=node.id, was_leader=was_leader, max_gap_s=longest_gap(load, t_stop, t_end))
                per_node.append(res)
                log(f"rolling restart of {node.id}{' (leader)' if was_leader else ''}: longest gap "
                    f"{res['max_gap_s']} s, {res['failed_requests']} failed requests")
        finally:
            load.stop()
        acked = sum(1 for r in load.records if r[2])
        leader = c.wait_for_leader(timeout=15)
        c.wait_converged(timeout=30)
        after = total_tasks(leader)
        gaps = [r["max_gap_s"] for r in per_node if r["max_gap_s"] is not None]
        return {"per_node": per_node, "max_gap_s": max(gaps) if gaps else None, "goal_s": 0.3,
                "acknowledged_writes": acked, "tasks_before": before, "tasks_after": after,
                "acknowledged_writes_lost": max(0, before + acked - after)}
    finally:
        c.stop()


def section(cfg, workdir: str | None = None) -> dict:
    workdir = workdir or getattr(cfg, "workdir", None) or tempfile.mkdtemp(prefix="bench-membership-")
    return {"join": bench_join(cfg, workdir), "rolling_restart": bench_rolling_restart(cfg, workdir)}
