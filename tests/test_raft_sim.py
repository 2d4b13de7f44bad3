"""Thousands of random schedules against the pure consensus core (see tests/raft_sim.py)."""
import os

import pytest

from raft_sim import InvariantViolation, Simulation, run_schedule

SCHEDULES = int(os.environ.get("RAFT_SIM_SCHEDULES", "5000"))
CHUNK = 100


@pytest.mark.parametrize("start", range(0, SCHEDULES, CHUNK))
def test_random_schedules_keep_raft_invariants(start):
    for seed in range(start, min(start + CHUNK, SCHEDULES)):
        run_schedule(seed)


def test_replay():
    """RAFT_SIM_SEED=N replays one schedule; by default, the one that found the snapshot bug."""
    run_schedule(int(os.environ.get("RAFT_SIM_SEED", "4195")))


def test_same_seed_replays_the_same_schedule():
    a, b = run_schedule(7), run_schedule(7)
    assert a.events == b.events and a.committed == b.committed and a.committed


def test_checker_catches_two_leaders_in_one_term():
    sim = Simulation(1, nodes=3)
    for node in sim.nodes.values():
        node.start()
    n0, n1 = sim.nodes["n0"].core, sim.nodes["n1"].core
    n0.role = n1.role = "leader"
    n0.term = n1.term = 4
    sim.observe(sim.nodes["n0"])
    with pytest.raises(InvariantViolation, match="two leaders in term 4"):
        sim.observe(sim.nodes["n1"])


def test_checker_catches_divergent_applies():
    sim = Simulation(1, nodes=3)
    sim.record_apply(sim.nodes["n0"], 1, 1, {"v": 1})
    with pytest.raises(InvariantViolation, match="applied"):
        sim.record_apply(sim.nodes["n1"], 1, 1, {"v": 2})


def test_checker_catches_stale_read():
    sim = Simulation(1, nodes=3)
    sim.reads[9] = 12
    with pytest.raises(InvariantViolation, match="read 9"):
        sim.check_read(sim.nodes["n0"], 9, 11)
