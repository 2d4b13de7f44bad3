"""The benchmark suite in its tiny smoke mode, so it never rots. No timing assertions: only
that every section ran, produced well-formed figures without errors, and wrote its outputs."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.cluster


def test_benchmark_suite_smoke(tmp_path):
    assert shutil.which("wrk"), "wrk is not installed (apt-get install -y wrk; .ci/run does it)"
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "run.py"), "--smoke",
                           "--out-dir", str(out), "--workdir", str(tmp_path / "work")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Targets (same run, medians)" in proc.stdout
    res = json.loads((out / "benchmark.json").read_text())
    assert (out / "benchmark.png").stat().st_size > 10_000

    assert {(r["nodes"], r["clients"]) for r in res["writes"]} == {(1, 1), (1, 16), (3, 1), (3, 16)}
    for r in res["writes"]:
        assert r["rps"] > 0 and r["baseline_rps"] > 0 and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]
        assert r["errors"] == 0, r
    for kind in ("baseline", "linearizable_leader", "stale_follower"):
        assert res["reads"][kind]["rps"] > 0 and res["reads"][kind]["errors"] == 0
    fast = res["failover"]["fast"]
    assert fast["no_recovery"] == 0 and fast["unavailable_s"] > 0
    sc = res["scale"]
    assert sc["writes_small"]["rps"] > 0 and sc["writes_big"]["rps"] > 0
    assert sc["catch_up"]["missed_writes"] >= 1500 and sc["catch_up"]["seconds"] > 0
    assert sc["restart"]["seconds"] > 0 and sc["memory"]["leader_mib_per_100k"] is not None
    assert sc["list"]["tasks_returned"] == 300
    assert {t["target"].split(" ")[0] for t in res["targets"]} >= {"3-node", "stale", "linearizable", "failover"}
    # The metrics baseline really ran without metrics (bench/ops.py refuses to measure otherwise:
    # an earlier version compared two clusters that both had them).
    cost = res["ops"]["metrics_cost"]
    assert cost["all_pairs"]["pairs"] >= 4 and cost["pairs_redone"] < cost["all_pairs"]["pairs"]
    # The contract section's pairs ran both modes at once on both clusters; every write succeeded
    # but a conditional PUT that met another client's update (412, rare: 64 tasks, 16 clients).
    contract = res["contract"]
    assert contract["pairs"] >= 4
    for plain in ("post", "put"):
        figures = contract[plain]
        low, high = figures["ratio_90_interval"]
        assert 0 < low <= figures["ratio"] <= high, figures
        for side in ("plain", "contract"):
            conditional = figures["contract_mode"] == "put_if" and side == "contract"
            allowed = {"200", "412"} if conditional else {"200", "201"}
            assert figures[side]["ok_rps"] > 0 and set(figures[side]["statuses"]) <= allowed, figures[side]
    assert all(r["runs_redone"] >= 0 for r in res["writes"])  # the writes followed the leader
