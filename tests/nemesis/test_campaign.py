"""The nemesis campaign against real nodes.

CI part (always): one run per entry of ``campaign.CI_RUNS`` (kill -9/restart, SIGSTOP,
partitions, storage crash points, delay/drops, everything mixed, damaged files on stopped
nodes, large entries, hostile requests; 3 and 5 nodes; about 2.5 minutes in all). Each
run's seed is derived from a base seed (random unless NEMESIS_SEED / --nemesis-seed is
given) and printed with the schedule on failure, with the command that replays it.

The long campaign is a command, not a test: ``python -m tests.nemesis.campaign --long --minutes 30``.
"""
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from .campaign import CI_RUNS, RunConfig, derive_seed, run_one
from .conftest import nemesis_option

pytestmark = pytest.mark.nemesis


@pytest.fixture(scope="session")
def nemesis_base_seed(request):
    seed = nemesis_option(request.config, "--nemesis-seed", "NEMESIS_SEED", int)
    if seed is None:
        seed = random.SystemRandom().randrange(1, 10**9)
    print(f"\n[nemesis] base seed {seed} (rerun all with NEMESIS_SEED={seed})")
    return seed


def _workdir(request, label):
    """Run artefacts go to NEMESIS_RUNS_DIR (default: <tmp>/pickledb-nemesis/), not to
    pytest's tmp_path, which other pytest sessions prune; a passing run's directory is
    removed, a failing one is kept and named in the report."""
    root = nemesis_option(request.config, "--nemesis-runs-dir", "NEMESIS_RUNS_DIR")
    root = Path(root) if root else Path(tempfile.gettempdir()) / "pickledb-nemesis"
    d = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{label}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.parametrize("idx,profile,nodes,duration",
                         [(i, *run) for i, run in enumerate(CI_RUNS)],
                         ids=[f"{p}-n{n}" for p, n, _ in CI_RUNS])
def test_nemesis_ci(request, nemesis_base_seed, idx, profile, nodes, duration):
    cfg = RunConfig(derive_seed(nemesis_base_seed, idx), profile, nodes, duration)
    cfg.workdir = _workdir(request, cfg.label())
    result = run_one(cfg)
    if result.ok:
        shutil.rmtree(cfg.workdir, ignore_errors=True)
    assert result.ok, "\n" + result.report
