"""The cost of the API contract on write throughput: POST /tasks with and without an
Idempotency-Key, PUT /tasks/<id> with and without If-Match, on one 3-node cluster.

Two identical 3-node clusters; each pair is one wrk run against each leader at the same time,
one with the contract's header and one without, so whatever slows the machine meanwhile slows
both (run one after the other, pairs scattered by +-10%). Halfway through, the clusters swap
modes. The ratio reported is the median of the pairs' ratios, with a bootstrap 90% interval
(goal: at least 0.95). A conditional PUT names the version the client last saw of its task; the
tasks outnumber the clients, so few lose with 412; the ratio compares successful writes per
second.

    .venv/bin/python bench/contract.py [--smoke]      # alone; bench/run.py calls section(cfg)
"""
from __future__ import annotations

import argparse
import functools
import itertools
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
    """{"clients", "nodes", "pairs", "pairs_redone", "post": {...}, "put": {...}}: for each
    comparison the plain and the contract runs' medians (rps, ok_rps: successful writes per
    second, p50, p99, errors, answers by status), the median paired ratio of their successful
    write rates and its 90% interval."""
    clients = getattr(cfg, "contract_clients", 16)
    pairs = cfg.repeats * 4  # per comparison
    workdir = tempfile.mkdtemp(prefix="contract-", dir=getattr(cfg, "workdir", None))
    clusters = []
    try:
        for name in ("a", "b"):
            clusters.append(bench.start_cluster(workdir, f"contract-{name}", 3)[0])
        ids = {id(c): bench.some_task_ids(c.wait_for_leader(timeout=15), TASKS) for c in clusters}
        tags = itertools.count()  # a fresh key prefix per run: a run again must not replay the first
        result = {"clients": clients, "nodes": 3, "pairs": pairs, "pairs_redone": 0}

        def one(cluster, mode: str):
            """A wrk run of `mode` against the cluster's leader; None if leadership moved meanwhile."""
            leader, tag = cluster.wait_for_leader(timeout=15), next(tags)
            statuses = os.path.join(workdir, f"statuses-{tag}.json")
            # The PUT targets with their current versions, so a conditional PUT starts right (a
            # session per run: the two runs of a pair ask at the same time).
            with requests.Session() as session:
                targets = ",".join(f"{i}:{session.get(f'{leader}/tasks/{i}', timeout=10).json()['version']}"
                                   for i in ids[id(cluster)]) if mode.startswith("put") else ""
            env = {"BENCH_MODE": mode, "BENCH_TASKS": targets, "BENCH_PREFIX": f"{mode}-{tag}-",
                   "BENCH_STATUS_FILE": statuses}
            r = bench.steady_run(cluster, clients, cfg.duration, CONTRACT_LUA, env)
            if r is None:
                return None
            with open(statuses) as f:
                r["statuses"] = json.load(f)
            done = sum(n for status, n in r["statuses"].items() if status.startswith("2"))
            r["ok_rps"] = r["rps"] * done / max(1, sum(r["statuses"].values()))
            return r

        def pair(modes: dict) -> dict:
            """{mode: run} of one run per mode ({mode: cluster}) at the same time."""
            for _ in range(3):  # a pair in which a leader changed is run again
                runs = bench.concurrent_runs({mode: functools.partial(one, c, mode) for mode, c in modes.items()})
                if runs:
                    return runs
                result["pairs_redone"] += 1
                bench.log("  contract: a leader changed during the pair; running it again")
            raise RuntimeError("leadership kept moving during the runs: the machine is too busy")

        def figures(rs: list[dict]) -> dict:
            statuses: dict = {}
            for r in rs:
                for status, n in r["statuses"].items():
                    statuses[status] = statuses.get(status, 0) + n
            return {**bench.summarize(rs), "ok_rps": bench.rnd(bench.median(r["ok_rps"] for r in rs), 1),
                    "statuses": statuses}
        for plain, contract in PAIRS:
            pair({plain: clusters[0], contract: clusters[1]})  # warm-up, not recorded
            runs: dict = {plain: [], contract: []}
            for rep in range(pairs):
                # Halfway the clusters swap modes: whatever tells them apart is on both sides.
                first, second = clusters if rep < pairs // 2 else clusters[::-1]
                got = pair({plain: first, contract: second})
                for mode in (plain, contract):
                    runs[mode].append(got[mode])
                bench.log(f"  contract {clients} clients, pair {rep + 1}: {plain} {got[plain]['ok_rps']:.0f} "
                          f"writes/s, {contract} {got[contract]['ok_rps']:.0f} writes/s "
                          f"(answers {got[contract]['statuses']})")
            ratios = [c["ok_rps"] / p["ok_rps"] for p, c in zip(runs[plain], runs[contract])]
            low, high = bench.median_interval(ratios)
            result[plain] = {"plain": figures(runs[plain]), "contract": figures(runs[contract]),
                             "contract_mode": contract, "ratio": bench.rnd(bench.median(ratios)),
                             "ratio_90_interval": [bench.rnd(low), bench.rnd(high)]}
            bench.log(f"  contract {contract} / {plain}: {result[plain]['ratio']} "
                      f"(90% interval {result[plain]['ratio_90_interval']})")
        return result
    finally:
        for c in clusters:
            c.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="one short run per mode")
    p.add_argument("--repeats", type=int, default=None, help="pairs per comparison / 4 (default 5; smoke 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 3; smoke 1)")
    p.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    a = p.parse_args(argv)
    cfg = argparse.Namespace(repeats=a.repeats or (1 if a.smoke else 5), duration=a.duration or (1 if a.smoke else 3),
                             contract_clients=a.clients, workdir=None)
    print(json.dumps(section(cfg), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
