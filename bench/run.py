#!/usr/bin/env python3
"""PickleDB Cluster benchmark suite.

    .venv/bin/python bench/run.py            # full run (~10 min): docs/benchmark.json + docs/benchmark.png
    .venv/bin/python bench/run.py --smoke    # tiny run for CI (< 1 min), writes to bench/results/smoke/

Starts its own clusters on loopback (tests/harness.py, heartbeat 0.1 s / election 0.6 s unless
said otherwise), drives them with wrk (one wrk thread, N connections = N concurrent closed-loop
clients, Lua scripts in bench/lua/) and compares them with the stack limit: the same
`POST /tasks` / `GET /tasks/<id>` on a bare Flask app under the same waitress server and thread
count, in one process, with no disk and no replication (bench/baseline_app.py).

Every figure is the median over --repeats runs. Every ratio is taken between runs of the same
invocation, and each cluster run is paired with a baseline run made right before it at the
same concurrency; the ratio reported is the median of those paired ratios.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time

import requests

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (BENCH, DEFAULTS, FAST, GET_LUA, POST_LUA, ROOT, WRK, Baseline,  # noqa: E402
                    Cluster, fill_to, leader_run, log, machine_info, median, node_pids, rnd, rss_mib, run_wrk,
                    some_task_ids, start_cluster, summarize, total_tasks, wait_for)
from failover import WriteLoad  # noqa: E402
from node_cli import SERVER_THREADS  # noqa: E402

SECTIONS = ("writes", "reads", "failover", "scale", "membership", "contract", "ops", "tls")


# ------------------------------------------------------------------ sections
def bench_writes(cfg, base: Baseline, workdir: str, res: dict) -> list[dict]:
    rows = []
    for n in cfg.sizes:
        log(f"writes: starting a {n}-node cluster")
        c, leader = start_cluster(workdir, f"writes{n}", n)
        try:
            run_wrk(leader + "/tasks", POST_LUA, 16, 1)  # warm-up, not recorded
            runs = {k: [] for k in cfg.clients}
            for rep in range(cfg.repeats):
                for k in cfg.clients:
                    b = run_wrk(base.url + "/tasks", POST_LUA, k, cfg.duration, pids={"baseline": base.proc.pid})
                    r = leader_run(c, k, cfg.duration)  # the first leader may lose its place under load
                    r["baseline_rps"] = b["rps"]
                    r["baseline_p50_ms"] = b["p50_ms"]
                    r["baseline_cpu"] = b["cpu"]["baseline"]
                    runs[k].append(r)
                    log(f"  {n} nodes, {k:>2} clients, run {rep + 1}: {r['rps']:7.0f} req/s "
                        f"(baseline {b['rps']:.0f}), p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.1f} ms, "
                        f"errors {r['errors']}")
            for k in cfg.clients:
                rs = runs[k]
                rows.append({
                    "nodes": n, "clients": k, **summarize(rs),
                    "baseline_rps": rnd(median(r["baseline_rps"] for r in rs), 1),
                    "baseline_p50_ms": rnd(median(r["baseline_p50_ms"] for r in rs)),
                    "ratio": rnd(median(r["rps"] / r["baseline_rps"] for r in rs)),
                    "baseline_cpu": rnd(median(r["baseline_cpu"] for r in rs), 2),
                    "runs_redone": sum(r["redone"] for r in rs),
                    "runs": [{k2: (rnd(v, 3) if isinstance(v, float) else v) for k2, v in r.items()} for r in rs],
                })
            if n == 3 and "reads" in cfg.section_list:
                res["reads"] = bench_reads(cfg, base, c, c.wait_for_leader(timeout=15))
        finally:
            c.stop()
    return rows


def bench_reads(cfg, base: Baseline, c: Cluster, leader: str) -> dict:
    """Reads on the 3-node cluster of the write benchmark (its tasks stay stored)."""
    log("reads: on the 3-node cluster")
    workdir = c.root
    follower = next(u for u in c.urls if u != leader)
    ids_file = os.path.join(workdir, "ids-cluster.txt")
    base_ids = os.path.join(workdir, "ids-base.txt")
    with open(ids_file, "w") as f:
        f.write("\n".join(some_task_ids(leader, cfg.read_ids)) + "\n")
    with open(base_ids, "w") as f:
        f.write("\n".join(some_task_ids(base.url, cfg.read_ids)) + "\n")
    c.wait_converged()
    k = cfg.read_clients
    pids = node_pids(c, leader)
    run_wrk(leader, GET_LUA, 16, 1, env={"BENCH_IDS": ids_file})
    run_wrk(follower, GET_LUA, 16, 1, env={"BENCH_IDS": ids_file, "BENCH_SUFFIX": "?consistency=stale"})
    runs = []
    for rep in range(cfg.repeats):
        b = run_wrk(base.url, GET_LUA, k, cfg.duration, env={"BENCH_IDS": base_ids},
                    pids={"baseline": base.proc.pid})
        lin = run_wrk(leader, GET_LUA, k, cfg.duration, env={"BENCH_IDS": ids_file}, pids=pids)
        stale = run_wrk(follower, GET_LUA, k, cfg.duration,
                        env={"BENCH_IDS": ids_file, "BENCH_SUFFIX": "?consistency=stale"}, pids=pids)
        runs.append({"baseline": b, "linearizable_leader": lin, "stale_follower": stale})
        log(f"  reads, {k} clients, run {rep + 1}: baseline {b['rps']:.0f}, leader linearizable "
            f"{lin['rps']:.0f}, follower stale {stale['rps']:.0f} req/s (errors {lin['errors']}/{stale['errors']})")
    out = {"clients": k}
    for kind in ("baseline", "linearizable_leader", "stale_follower"):
        out[kind] = summarize([r[kind] for r in runs])
        if kind != "baseline":
            out[kind]["ratio"] = rnd(median(r[kind]["rps"] / r["baseline"]["rps"] for r in runs))
    return out


def bench_failover(cfg, workdir: str) -> dict:
    results = {}
    for label, timings, reps in (("fast", FAST, cfg.failover_fast), ("defaults", DEFAULTS, cfg.failover_defaults)):
        if reps <= 0:
            continue
        hb, el = timings
        log(f"failover ({label}: heartbeat {hb} s, election {el} s): {reps} kills")
        c, leader = start_cluster(workdir, f"failover-{label}", 3, timings)
        kills = []
        try:
            for rep in range(reps):
                c.wait_converged(timeout=max(15, 6 * el))
                leader = c.wait_for_leader(timeout=max(15, 4 * el))
                victim = c.by_url(leader)
                load = WriteLoad(c.urls, clients=cfg.failover_clients, timeout=max(5.0, 6 * el)).start()
                try:
                    time.sleep(cfg.failover_warmup if label == "fast" else 3.0)
                    t_kill = time.monotonic()
                    victim.kill9()
                    deadline = t_kill + max(20, 8 * el)
                    while time.monotonic() < deadline and load.first_ack_after(t_kill) is None:
                        time.sleep(0.01)
                    time.sleep(0.5)
                    t_end = time.monotonic()
                finally:
                    load.stop()
                res = load.analyse(t_kill, t_end)
                kills.append(res)
                log(f"  kill {rep + 1}: no acknowledged write for {res['unavailable_s']} s after the kill "
                    f"(gap {res['max_gap_s']} s), {res['failed_requests']} failed requests")
                victim.start()
        finally:
            c.stop()
        results[label] = {
            "heartbeat_s": hb, "election_s": el, "kills": kills,
            "unavailable_s": rnd(median(k["unavailable_s"] for k in kills)),
            "unavailable_max_s": rnd(max((k["unavailable_s"] for k in kills if k["unavailable_s"] is not None),
                                         default=None)),
            "max_gap_s": rnd(median(k["max_gap_s"] for k in kills)),
            "failed_requests": median(k["failed_requests"] for k in kills),
            "no_recovery": sum(1 for k in kills if k["unavailable_s"] is None),
        }
    return results


def bench_scale(cfg, workdir: str) -> dict:
    log("scale: starting a 3-node cluster")
    c, leader = start_cluster(workdir, "scale", 3)
    out = {}
    try:
        rss_empty = {u: rss_mib(c.by_url(u).proc.pid) for u in c.urls}

        def measure(label):
            rs = []
            for _ in range(cfg.repeats):
                start = total_tasks(leader)
                r = run_wrk(leader + "/tasks", POST_LUA, 64, duration=600,
                            env={"BENCH_LIMIT": str(cfg.scale_run_writes)}, pids=node_pids(c, leader))
                r["stored_before"] = start
                rs.append(r)
                log(f"  {label}: {r['rps']:.0f} req/s with {start} tasks stored (p99 {r['p99_ms']:.0f} ms)")
            return {**summarize(rs), "stored_before": [r["stored_before"] for r in rs],
                    "runs_rps": [rnd(r["rps"], 1) for r in rs]}

        log(f"scale: preloading {cfg.scale_small} tasks")
        fill_to(leader, cfg.scale_small)
        out["writes_small"] = measure(f"writes at {cfg.scale_small}")

        have = fill_to(leader, cfg.scale_list, exact=True)
        s = requests.Session()
        times_all, times_page = [], []
        for _ in range(max(3, cfg.repeats)):
            t = time.perf_counter()
            r = s.get(f"{leader}/tasks?limit={cfg.scale_list}", timeout=60)
            times_all.append(time.perf_counter() - t)
            assert r.status_code == 200 and len(r.json()["tasks"]) == cfg.scale_list
            t = time.perf_counter()
            r = s.get(f"{leader}/tasks?limit=100&offset={cfg.scale_list // 2}", timeout=60)
            times_page.append(time.perf_counter() - t)
            assert r.status_code == 200
        out["list"] = {"tasks_returned": cfg.scale_list, "stored": have,
                       "full_ms": rnd(median(times_all) * 1000, 1), "page100_ms": rnd(median(times_page) * 1000, 2),
                       "response_bytes": len(s.get(f"{leader}/tasks?limit={cfg.scale_list}", timeout=60).content)}
        log(f"  GET /tasks with {cfg.scale_list} tasks: {out['list']['full_ms']} ms; one page of 100: "
            f"{out['list']['page100_ms']} ms")

        # A follower misses `scale_big` writes, then comes back.
        lagger = next(n for n in c.nodes if n.url != leader)
        c.wait_converged()
        lagger.kill9()
        base = total_tasks(leader)
        log(f"scale: follower {lagger.url} is down; writing {cfg.scale_big} tasks")
        t = time.monotonic()
        have = fill_to(leader, base + cfg.scale_big)
        out["preload_rate"] = rnd((have - base) / (time.monotonic() - t), 1)
        missed = have - base
        target = requests.get(leader + "/status", timeout=10).json()["commit_index"]
        t0 = time.monotonic()
        lagger.start(wait=False)
        serving = wait_for(lambda: lagger.status(timeout=0.2) and time.monotonic(), 60, "the lagging node to answer")
        wait_for(lambda: (lagger.status(timeout=0.5) or {}).get("applied_index", 0) >= target, 120,
                 "the lagging node to catch up", interval=0.02)
        out["catch_up"] = {"missed_writes": missed, "seconds": rnd(time.monotonic() - t0),
                           "to_serving_s": rnd(serving - t0)}
        log(f"  catch-up of {missed} missed writes: {out['catch_up']['seconds']} s "
            f"(process answering after {out['catch_up']['to_serving_s']} s)")

        out["writes_big"] = measure(f"writes at {cfg.scale_big}+")
        c.wait_converged(timeout=60)
        stored = total_tasks(leader)
        rss_now = {u: rss_mib(c.by_url(u).proc.pid) for u in c.urls}
        out["memory"] = {"stored": stored, "rss_empty_mib": {u: rnd(v, 1) for u, v in rss_empty.items()},
                         "rss_mib": {u: rnd(v, 1) for u, v in rss_now.items()},
                         "leader_mib_per_100k": rnd((rss_now[leader] - rss_empty[leader]) * 100_000 / stored, 1),
                         "follower_mib_per_100k": rnd(median((rss_now[u] - rss_empty[u]) * 100_000 / stored
                                                             for u in c.urls if u != leader and u != lagger.url)
                                                      if len(c.urls) > 2 else None, 1)}
        log(f"  RSS per 100,000 tasks: leader {out['memory']['leader_mib_per_100k']} MiB, "
            f"follower {out['memory']['follower_mib_per_100k']} MiB")

        # Restart of a node holding every task (kill -9, then start): time until it answers and
        # until it has applied everything the leader committed.
        restarts = []
        node = next(n for n in c.nodes if n.url != leader)
        for _ in range(cfg.restart_repeats):
            c.wait_converged(timeout=60)
            target = requests.get(leader + "/status", timeout=10).json()["commit_index"]
            node.kill9()
            t0 = time.monotonic()
            node.start(wait=False)
            serving = wait_for(lambda: node.status(timeout=0.2) and time.monotonic(), 60, "the node to answer",
                               interval=0.02)
            wait_for(lambda: (node.status(timeout=0.5) or {}).get("applied_index", 0) >= target, 60,
                     "the node to apply its log", interval=0.02)
            restarts.append((serving - t0, time.monotonic() - t0))
        out["restart"] = {"stored": stored, "to_serving_s": rnd(median(r[0] for r in restarts)),
                          "seconds": rnd(median(r[1] for r in restarts)), "runs": [[rnd(a), rnd(b)] for a, b in restarts]}
        log(f"  restart with {stored} tasks: answering after {out['restart']['to_serving_s']} s, "
            f"caught up after {out['restart']['seconds']} s")
        out["throughput_ratio"] = rnd(out["writes_big"]["rps"] / out["writes_small"]["rps"])
    finally:
        c.stop()
    return out


# ------------------------------------------------------------------ report
def targets(res: dict) -> list[dict]:
    rows = []

    def add(name, value, op, goal, unit=""):
        ok = None if value is None else (value >= goal if op == ">=" else value <= goal)
        rows.append({"target": name, "value": value, "goal": f"{op} {goal}{unit}", "unit": unit, "met": ok})

    w = {(r["nodes"], r["clients"]): r for r in res.get("writes", [])}
    if (3, 64) in w:
        add("3-node writes, 64 clients / stack limit", w[(3, 64)]["ratio"], ">=", 0.6)
    if (3, 16) in w:
        add("3-node writes, 16 clients / stack limit", w[(3, 16)]["ratio"], ">=", 0.5)
    if (3, 1) in w:
        add("3-node write p50 latency, 1 client (ms)", w[(3, 1)]["p50_ms"], "<=", 5.0)
    rd = res.get("reads")
    if rd:
        add("stale reads on a follower / stack limit", rd["stale_follower"]["ratio"], ">=", 0.9)
        add("linearizable reads on the leader / stack limit", rd["linearizable_leader"]["ratio"], ">=", 0.5)
    fo = res.get("failover", {}).get("fast")
    if fo:
        add("failover 0.1/0.6 s: no acknowledged write (s)", fo["unavailable_s"], "<=", 1.5)
    sc = res.get("scale")
    if sc:
        add(f"writes at {sc['catch_up']['missed_writes']:,}+ / at 1,000 stored", sc["throughput_ratio"], ">=", 0.8)
        add(f"catch-up of {sc['catch_up']['missed_writes']:,} missed writes (s)", sc["catch_up"]["seconds"], "<=", 5.0)
        add(f"restart with {sc['restart']['stored']:,} tasks (s)", sc["restart"]["seconds"], "<=", 3.0)
    m = res.get("membership")
    if m:
        add(f"new node to voter at {m['join']['tasks']:,} tasks (s)", m["join"]["join_to_voter_s"], "<=", 5.0)
        add("rolling restart 0.1/0.6 s: longest write gap per node (s)", m["rolling_restart"]["max_gap_s"], "<=", 0.3)
    c = res.get("contract")
    if c:
        add("writes with Idempotency-Key / without", c["post"]["ratio"], ">=", 0.95)
        add("PUT with If-Match / without", c["put"]["ratio"], ">=", 0.95)
    for t in (res.get("ops") or {}).get("targets", []):
        rows.append({**t, "goal": "", "unit": ""})
    return rows


def fmt(v, nd=2):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def tables(res: dict) -> str:
    lines = []
    if res.get("writes"):
        lines += ["Writes (POST /tasks), medians", "",
                  "| nodes | clients | req/s | stack limit req/s | ratio | p50 ms | p99 ms | errors |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["writes"]:
            lines.append(f"| {r['nodes']} | {r['clients']} | {r['rps']:.0f} | {r['baseline_rps']:.0f} | "
                         f"{r['ratio']:.2f} | {r['p50_ms']:.2f} | {r['p99_ms']:.1f} | {r['errors']} |")
        lines.append("")
    if res.get("reads"):
        rd = res["reads"]
        lines += [f"Reads (GET /tasks/<id>, {rd['clients']} clients), medians", "",
                  "| kind | req/s | ratio | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
        for kind, label in (("baseline", "stack limit (bare Flask)"), ("linearizable_leader", "linearizable, leader"),
                            ("stale_follower", "stale, follower")):
            r = rd[kind]
            lines.append(f"| {label} | {r['rps']:.0f} | {fmt(r.get('ratio'))} | {r['p50_ms']:.2f} | "
                         f"{r['p99_ms']:.1f} | {r['errors']} |")
        lines.append("")
    if res.get("failover"):
        lines += ["Failover (kill -9 of the leader under a steady write load), medians", "",
                  "| timings | kills | no acked write for (s) | worst (s) | failed requests |",
                  "|---|---:|---:|---:|---:|"]
        for label, f in res["failover"].items():
            lines.append(f"| {f['heartbeat_s']} s / {f['election_s']} s | {len(f['kills'])} | "
                         f"{fmt(f['unavailable_s'])} | {fmt(f['unavailable_max_s'])} | {fmt(f['failed_requests'], 0)} |")
        lines.append("")
    if res.get("scale"):
        sc = res["scale"]
        lines += ["Scale (3 nodes)", "", "| measure | value |", "|---|---:|",
                  f"| writes/s, 64 clients, {sc['writes_small']['stored_before'][0]:,} stored | {sc['writes_small']['rps']:.0f} |",
                  f"| writes/s, 64 clients, {sc['writes_big']['stored_before'][0]:,} stored | {sc['writes_big']['rps']:.0f} |",
                  f"| catch-up of {sc['catch_up']['missed_writes']:,} missed writes | {sc['catch_up']['seconds']:.2f} s |",
                  f"| restart with {sc['restart']['stored']:,} tasks (answering / caught up) | "
                  f"{sc['restart']['to_serving_s']:.2f} s / {sc['restart']['seconds']:.2f} s |",
                  f"| RSS per 100,000 tasks (leader / follower) | {fmt(sc['memory']['leader_mib_per_100k'], 1)} MiB / "
                  f"{fmt(sc['memory']['follower_mib_per_100k'], 1)} MiB |",
                  f"| GET /tasks?limit={sc['list']['tasks_returned']} ({sc['list']['tasks_returned']:,} tasks, "
                  f"{sc['list']['response_bytes'] / 1e6:.1f} MB) | {sc['list']['full_ms']:.0f} ms |",
                  f"| GET /tasks?limit=100 (one page) | {sc['list']['page100_ms']:.1f} ms |",
                  f"| preload rate (64 clients) | {sc['preload_rate']:.0f} writes/s |", ""]
    if res.get("tls"):
        import tls_bench
        lines += ["Writes over HTTPS with mutual TLS (3 nodes, paired runs)", "", tls_bench.readme_text(res["tls"]), ""]
    if res.get("targets"):
        lines += ["Targets (same run, medians)", "", "| target | goal | measured | met |", "|---|---|---:|---|"]
        for t in res["targets"]:
            lines.append(f"| {t['target']} | {t['goal']} | {fmt(t['value'])} | "
                         f"{'-' if t['met'] is None else ('yes' if t['met'] else 'NO')} |")
        lines.append("")
    return "\n".join(lines)


def chart(res: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(f"PickleDB Cluster benchmark — {res['meta']['machine']['cores']} cores, "
                 f"{res['meta']['date'][:10]}, medians of {res['meta']['repeats']} runs", fontsize=13)
    writes = res.get("writes", [])
    ax = axes[0][0]
    if writes:
        clients = sorted({r["clients"] for r in writes})
        sizes = sorted({r["nodes"] for r in writes})
        width = 0.8 / (len(sizes) + 1)
        for j, k in enumerate(clients):
            base = median(r["baseline_rps"] for r in writes if r["clients"] == k)
            ax.bar(j - 0.4 + width / 2, base, width, color="#bbbbbb", label="stack limit" if j == 0 else None)
            for i, n in enumerate(sizes):
                r = next(r for r in writes if r["clients"] == k and r["nodes"] == n)
                b = ax.bar(j - 0.4 + width * (i + 1.5), r["rps"], width, color=f"C{i}",
                           label=f"{n} node{'s' if n > 1 else ''}" if j == 0 else None)
                ax.bar_label(b, labels=[f"{r['ratio']:.0%}"], fontsize=7)
        ax.set_xticks(range(len(clients)), [f"{k} client{'s' if k > 1 else ''}" for k in clients])
        ax.set_ylabel("writes/s")
        ax.set_title("POST /tasks throughput (label: share of stack limit)")
        ax.legend(fontsize=8)
    ax = axes[0][1]
    if writes:
        for i, n in enumerate(sizes):
            rs = [r for r in writes if r["nodes"] == n]
            ax.plot([r["clients"] for r in rs], [r["p50_ms"] for r in rs], "o-", color=f"C{i}", label=f"{n}N p50")
            ax.plot([r["clients"] for r in rs], [r["p99_ms"] for r in rs], "s--", color=f"C{i}", alpha=0.6,
                    label=f"{n}N p99")
        bl = [(k, median(r["baseline_p50_ms"] for r in writes if r["clients"] == k)) for k in clients]
        ax.plot([k for k, _ in bl], [v for _, v in bl], "o:", color="gray", label="stack p50")
        ax.axhline(5, color="red", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("ms")
        ax.set_title("write latency")
        ax.legend(fontsize=7, ncol=2)
    ax = axes[0][2]
    rd = res.get("reads")
    if rd:
        kinds = [("baseline", "stack limit"), ("linearizable_leader", "linearizable\n(leader)"),
                 ("stale_follower", "stale\n(follower)")]
        vals = [rd[k]["rps"] for k, _ in kinds]
        bars = ax.bar([l for _, l in kinds], vals, color=["#bbbbbb", "C0", "C2"])
        ax.bar_label(bars, labels=["100%"] + [f"{rd[k]['ratio']:.0%}" for k, _ in kinds[1:]], fontsize=8)
        ax.axhline(rd["baseline"]["rps"] * 0.9, color="C2", lw=0.8, ls=":")
        ax.axhline(rd["baseline"]["rps"] * 0.5, color="C0", lw=0.8, ls=":")
        ax.set_ylabel("reads/s")
        ax.set_title(f"GET /tasks/<id>, {rd['clients']} clients (dotted: targets)")
    ax = axes[1][0]
    fo = res.get("failover")
    if fo:
        for i, (label, f) in enumerate(fo.items()):
            ys = [k["unavailable_s"] for k in f["kills"] if k["unavailable_s"] is not None]
            ax.scatter([i] * len(ys), ys, color=f"C{i}", alpha=0.6)
            ax.hlines(f["unavailable_s"], i - 0.25, i + 0.25, color="black")
        ax.set_xticks(range(len(fo)), [f"{f['heartbeat_s']} s / {f['election_s']} s" for f in fo.values()])
        ax.axhline(1.5, color="red", lw=0.8, ls=":")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("seconds without an acknowledged write")
        ax.set_title("failover after kill -9 of the leader (bar: median)")
    sc = res.get("scale")
    ax = axes[1][1]
    if sc:
        labels = [f"{sc['writes_small']['stored_before'][0]:,}\nstored", f"{sc['writes_big']['stored_before'][0]:,}\nstored"]
        bars = ax.bar(labels, [sc["writes_small"]["rps"], sc["writes_big"]["rps"]], color=["C0", "C1"])
        ax.bar_label(bars, labels=["", f"{sc['throughput_ratio']:.0%}"], fontsize=8)
        ax.axhline(sc["writes_small"]["rps"] * 0.8, color="red", lw=0.8, ls=":")
        ax.set_ylabel("writes/s (3 nodes, 64 clients)")
        ax.set_title("write throughput vs stored tasks")
    ax = axes[1][2]
    if sc:
        names = [f"catch-up\n{sc['catch_up']['missed_writes'] // 1000}k missed", f"restart\n{sc['restart']['stored'] // 1000}k tasks",
                 f"GET /tasks\n{sc['list']['tasks_returned']:,} tasks"]
        vals = [sc["catch_up"]["seconds"], sc["restart"]["seconds"], sc["list"]["full_ms"] / 1000]
        bars = ax.bar(names, vals, color=["C3", "C4", "C5"])
        ax.bar_label(bars, labels=[f"{v:.2f} s" for v in vals], fontsize=8)
        ax.scatter([0, 1], [5, 3], marker="_", s=800, color="red", label="target")
        ax.set_ylabel("seconds")
        ax.set_title(f"recovery and listing (RSS {fmt(sc['memory']['leader_mib_per_100k'], 0)} MiB/100k tasks)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------ main
def config(argv=None):
    p = argparse.ArgumentParser(description="PickleDB Cluster benchmark suite")
    p.add_argument("--smoke", action="store_true", help="tiny run that checks the suite works (CI)")
    p.add_argument("--out-dir", default=None, help="where to write benchmark.json/.png (default docs/, "
                   "or bench/results/smoke with --smoke)")
    p.add_argument("--workdir", default=None, help="data directories (default: a fresh temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the workdir (node logs and data)")
    p.add_argument("--repeats", type=int, default=None, help="runs per figure (default 5; smoke 1)")
    p.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 3; smoke 1)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)} (reads run on the 3-node "
                   "cluster of the writes section)")
    p.add_argument("--kills", default=None, help="failover kills with fast,default timings (default 5,3; smoke 1,0)")
    p.add_argument("--sizes", default=None, help="cluster sizes for the write benchmark (default 1,3,5)")
    p.add_argument("--clients", default=None, help="concurrent clients for writes (default 1,16,64)")
    a = p.parse_args(argv)
    a.repeats = a.repeats or (1 if a.smoke else 5)
    a.duration = a.duration or (1 if a.smoke else 3)
    a.sizes = tuple(int(x) for x in a.sizes.split(",")) if a.sizes else ((1, 3) if a.smoke else (1, 3, 5))
    a.clients = tuple(int(x) for x in a.clients.split(",")) if a.clients else ((1, 16) if a.smoke else (1, 16, 64))
    a.read_clients = 16 if a.smoke else 64
    a.read_ids = 50 if a.smoke else 300
    a.failover_fast, a.failover_defaults = ((int(x) for x in a.kills.split(",")) if a.kills
                                            else ((1, 0) if a.smoke else (5, 3)))
    a.failover_clients = 4 if a.smoke else 8
    a.failover_warmup = 0.5 if a.smoke else 1.0
    a.scale_small, a.scale_list, a.scale_big = (100, 300, 1500) if a.smoke else (1_000, 10_000, 100_000)
    a.scale_run_writes = 200 if a.smoke else 1000
    a.restart_repeats = 1 if a.smoke else 3
    if a.out_dir is None:
        a.out_dir = os.path.join(BENCH, "results", "smoke") if a.smoke else os.path.join(ROOT, "docs")
    a.section_list = [s.strip() for s in a.sections.split(",") if s.strip()]
    return a


def main(argv=None) -> int:
    cfg = config(argv)
    if not os.path.exists(WRK):
        print("error: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    workdir = cfg.workdir or tempfile.mkdtemp(prefix="pickledb-bench-")
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(cfg.out_dir, exist_ok=True)
    started = time.monotonic()
    res = {"meta": {"command": "python bench/run.py" + (" --smoke" if cfg.smoke else ""),
                    "argv": sys.argv[1:] if argv is None else argv, "smoke": cfg.smoke,
                    "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "repeats": cfg.repeats, "duration_s": cfg.duration, "server_threads": SERVER_THREADS,
                    "timings": {"heartbeat_s": FAST[0], "election_s": FAST[1]},
                    "load_generator": "wrk, 1 thread, one connection per client, closed loop",
                    "machine": machine_info(workdir)}}
    log(f"workdir {workdir}; machine {res['meta']['machine']}")
    base = Baseline(workdir).start()
    try:
        run_wrk(base.url + "/tasks", POST_LUA, 16, 1)  # warm-up
        if "writes" in cfg.section_list or "reads" in cfg.section_list:
            sizes = cfg.sizes if "writes" in cfg.section_list else (3,)
            writes = bench_writes(argparse.Namespace(**{**vars(cfg), "sizes": sizes}), base, workdir, res)
            if "writes" in cfg.section_list:
                res["writes"] = writes
    finally:
        base.stop()
    if "failover" in cfg.section_list:
        res["failover"] = bench_failover(cfg, workdir)
    if "scale" in cfg.section_list:
        res["scale"] = bench_scale(cfg, workdir)
    # These sections' modules import this one for its helpers: imported here, not at the top.
    if "membership" in cfg.section_list:
        import membership
        res["membership"] = membership.section(cfg, workdir)
    if "contract" in cfg.section_list:
        import contract
        res["contract"] = contract.section(cfg)
    if "ops" in cfg.section_list:
        import ops
        res["ops"] = ops.section(cfg)
    if "tls" in cfg.section_list:
        import tls_bench
        res["tls"] = tls_bench.section(cfg, workdir)
    res["targets"] = targets(res)
    res["meta"]["elapsed_s"] = round(time.monotonic() - started, 1)
    res["meta"]["load_avg_after"] = os.getloadavg()[0]
    json_path = os.path.join(cfg.out_dir, "benchmark.json")
    with open(json_path, "w") as f:
        json.dump(res, f, indent=1)
    png_path = os.path.join(cfg.out_dir, "benchmark.png")
    chart(res, png_path)
    print()
    print(tables(res))
    print(f"wrote {json_path} and {png_path} in {res['meta']['elapsed_s']} s")
    if not cfg.keep and not cfg.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
