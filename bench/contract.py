"""The cost of the API contract on write throughput: POST /tasks with and without an
Idempotency-Key, PUT /tasks/<id> with and without If-Match, on one 3-node cluster.

Each pair of runs is made back to back at the same concurrency, in alternating order; the
ratio reported is the median of the paired ratios (goal: at least 0.95). A conditional PUT
names the version the client last saw of its task; the tasks outnumber the clients, so few
lose with 412; the ratio compares successful writes per second.

    .venv/bin/python bench/contract.py [--smoke]      # alone; bench/run.py calls section(cfg)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import requests

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

import common as bench  # noqa: E402 (the helpers, and the paths it sets up)

CONTRACT_LUA = os.path.join(BENCH, "lua", "contract_write.lua")
TASKS = 64  # PUT targets: more than the clients, so a conditional PUT rarely meets another
PAIRS = (("post", "post_key"), ("put", "put_if"))


def section(cfg) -> dict:
    """{"clients", "nodes", "repeats", "post": {...}, "put": {...}}: for each pair the plain and
    the contract runs' medians (rps, ok_rps: successful writes per second, p50, p99, errors,
    answers by status) and the median paired ratio of their successful write rates."""
    clients = getattr(cfg, "contract_clients", 16)
    workdir = tempfile.mkdtemp(prefix="contract-", dir=getattr(cfg, "workdir", None))
    cluster, leader = bench.start_cluster(workdir, "contract", 3)
    try:
        ids = bench.some_task_ids(leader, TASKS)
        session = requests.Session()

        def targets() -> str:
            """The PUT targets with their current versions, so a conditional PUT starts right."""
            return ",".join(f"{i}:{session.get(f'{leader}/tasks/{i}', timeout=10).json()['version']}" for i in ids)
        pids = bench.node_pids(cluster, leader)
        runs: dict = {mode: [] for pair in PAIRS for mode in pair}

        def one(mode: str, rep: int) -> dict:
            statuses = os.path.join(workdir, f"statuses-{mode}-{rep}.json")
            env = {"BENCH_MODE": mode, "BENCH_TASKS": targets(), "BENCH_PREFIX": f"{mode}-{rep}-",
                   "BENCH_STATUS_FILE": statuses}
            r = bench.run_wrk(leader + "/tasks", CONTRACT_LUA, clients, cfg.duration, env=env, pids=pids)
            with open(statuses) as f:
                r["statuses"] = json.load(f)
            done = sum(n for status, n in r["statuses"].items() if status.startswith("2"))
            r["ok_rps"] = r["rps"] * done / max(1, sum(r["statuses"].values()))
            return r
        for mode in runs:
            one(mode, -1)  # warm-up, not recorded
        for rep in range(cfg.repeats):
            for pair in PAIRS:
                for mode in (pair if rep % 2 == 0 else pair[::-1]):
                    r = one(mode, rep)
                    runs[mode].append(r)
                    bench.log(f"  contract {mode:8s} {clients} clients, run {rep + 1}: {r['ok_rps']:7.0f} writes/s, "
                              f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms, answers {r['statuses']}")
        result = {"clients": clients, "nodes": 3, "repeats": cfg.repeats}
        def figures(rs: list[dict]) -> dict:
            statuses: dict = {}
            for r in rs:
                for status, n in r["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + n
            return {**bench.summarize(rs), "ok_rps": bench.rnd(bench.median(r["ok_rps"] for r in rs), 1),
                    "statuses": statuses}
        for plain, contract in PAIRS:
            result[plain] = {
                "plain": figures(runs[plain]), "contract": figures(runs[contract]), "contract_mode": contract,
                "ratio": bench.rnd(bench.median(c["ok_rps"] / p["ok_rps"]
                                                for p, c in zip(runs[plain], runs[contract]))),
            }
        return result
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="one short run per mode")
    p.add_argument("--repeats", type=int, default=None, help="paired runs (default 5; smoke 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 3; smoke 1)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    a = p.parse_args(argv)
    cfg = argparse.Namespace(repeats=a.repeats or (1 if a.smoke else 5), duration=a.duration or (1 if a.smoke else 3),
                             contract_clients=a.clients, workdir=None)
    print(json.dumps(section(cfg), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
