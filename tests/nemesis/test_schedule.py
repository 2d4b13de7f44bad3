"""Fault schedules are a pure function of (seed, profile, nodes, duration), and the
executor turns each event into the right process signals and proxy link states. No server
needed: the executor runs against a fake cluster and a real ProxyNet."""
import pytest

from .nemesis import Nemesis
from .proxy import ProxyNet
from .schedule import NET_KINDS, PROC_KINDS, PROFILES, Event, make_schedule


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("n", [3, 5])
def test_schedule_is_deterministic_and_well_formed(profile, n):
    a = make_schedule(1234, profile, n, 30)
    b = make_schedule(1234, profile, n, 30)
    assert a.events == b.events and a.snapshot_every == b.snapshot_every
    assert a.format() == b.format()
    assert a.events or profile == "none", "a 30 s schedule has faults"
    starts = {e.fault: e for e in a.events if e.phase == "start"}
    ends = {e.fault: e for e in a.events if e.phase == "end"}
    assert set(starts) == set(ends)
    for fid, s in starts.items():
        assert 0 < s.t < ends[fid].t <= 30
    # never two faults of one track at the same time
    for kinds in (PROC_KINDS, NET_KINDS):
        spans = sorted((starts[f].t, ends[f].t) for f in starts if starts[f].kind in kinds)
        for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
            assert e1 <= s2
    proc, net = PROFILES[profile]
    assert all(e.kind in proc + net for e in a.events)
    if n == 3:
        assert all(e.kind != "bridge" for e in a.events)
    for e in a.events:
        for key in ("targets", "minority", "order"):
            for t in e.args.get(key, []):
                assert t == "leader" or 0 <= t < n
    assert f"--seed 1234 --profile {profile} --nodes {n} --duration 30" in a.format()


def test_schedules_differ_by_seed_and_cover_every_fault():
    assert make_schedule(1, "mixed", 5, 30).events != make_schedule(2, "mixed", 5, 30).events
    seen = set()
    for seed in range(40):
        seen |= {e.kind for e in make_schedule(seed, "mixed", 5, 30).events}
    assert seen == set(PROC_KINDS) | set(NET_KINDS)
    points = set()
    for seed in range(40):
        points |= {e.args.get("point") for e in make_schedule(seed, "crash", 3, 30).events
                   if e.kind == "crash" and e.phase == "start"}
    assert points == {"wal_before_fsync", "snapshot_before_truncate", "snapshot_before_rename"}
    assert make_schedule(7, "crash", 3, 20).snapshot_every
    assert make_schedule(7, "kill", 3, 20).snapshot_every is None


def test_unknown_profile():
    with pytest.raises(ValueError):
        make_schedule(1, "nope", 3, 10)


# ------------------------------------------------------------------ executor

class FakeProc:
    def __init__(self, i):
        self.index, self.up, self.paused, self.calls, self.extra_env = i, True, False, [], {}

    def alive(self):
        return self.up

    def returncode(self):
        return None if self.up else 137

    def kill9(self):
        self.calls.append("kill9")
        self.up = False

    def start(self, extra_env=None):
        self.calls.append(("start", dict(extra_env or {})))
        self.up = True

    def pause(self):
        self.calls.append("pause")
        self.paused = True

    def resume(self):
        self.calls.append("resume")
        self.paused = False


class FakeCluster:
    def __init__(self, n, leader=1):
        self.n = n
        self.urls = [f"n{i}" for i in range(n)]
        self.procs = [FakeProc(i) for i in range(n)]
        self.leader = leader

    def node(self, i):
        return self.procs[i]

    def current_leader(self, statuses=None):
        return self.leader


@pytest.fixture
def setup():
    cluster = FakeCluster(5)
    net = ProxyNet(seed=0)
    for s in cluster.urls:
        for d in cluster.urls:
            if s != d:
                net.add_link(s, d, 1)     # never connected to in these tests
    yield cluster, net
    net.close()


def _nem(cluster, net):
    from .schedule import Schedule
    return Nemesis(cluster, net, Schedule(0, "mixed", cluster.n, 10, None, []), lambda: 0.0)


def _blocked(net):
    return {k for k, v in net.states().items() if "blocked" in v}


def test_executor_process_faults(setup):
    cluster, net = setup
    nem = _nem(cluster, net)
    nem.apply(Event(1, 1, "start", "kill", {"targets": ["leader", 3]}))
    assert not cluster.procs[1].up and not cluster.procs[3].up
    nem.apply(Event(2, 1, "end", "kill", {}))
    assert cluster.procs[1].up and cluster.procs[3].up
    nem.apply(Event(3, 2, "start", "pause", {"targets": [0]}))
    assert cluster.procs[0].paused
    nem.apply(Event(4, 2, "end", "pause", {}))
    assert not cluster.procs[0].paused
    nem.apply(Event(5, 3, "start", "crash", {"target": "leader", "point": "wal_before_fsync",
                                             "hit": 3}))
    assert cluster.procs[1].calls[-1] == ("start",
                                          {"PICKLEDB_CRASH_POINT": "wal_before_fsync:3"})
    cluster.procs[1].up = False               # it hit the crash point
    nem.apply(Event(6, 3, "end", "crash", {}))
    assert cluster.procs[1].up and cluster.procs[1].calls[-1] == ("start", {})
    assert any("found exited rc=137" in line for line in nem.log)


def test_executor_network_faults(setup):
    cluster, net = setup
    nem = _nem(cluster, net)
    nem.apply(Event(1, 1, "start", "isolate", {"target": "leader"}))
    assert _blocked(net) == {(s, d) for s in cluster.urls for d in cluster.urls
                             if s != d and "n1" in (s, d)}
    nem.apply(Event(2, 1, "end", "isolate", {}))
    assert not _blocked(net)
    nem.apply(Event(3, 2, "start", "split", {"minority": [0, 4], "with_leader": True}))
    minority = {"n1", "n4"}                  # the leader replaced the first member
    assert _blocked(net) == {(s, d) for s in cluster.urls for d in cluster.urls
                             if s != d and ((s in minority) != (d in minority))}
    nem.apply(Event(4, 2, "end", "split", {}))
    nem.apply(Event(5, 3, "start", "oneway", {"target": 2, "blocked": "out"}))
    assert _blocked(net) == {("n2", d) for d in cluster.urls if d != "n2"}
    nem.apply(Event(6, 3, "end", "oneway", {}))
    nem.apply(Event(7, 4, "start", "resp_loss", {"target": 2, "side": "in"}))
    assert {k for k, v in net.states().items() if v == "drop_resp"} == \
        {(s, "n2") for s in cluster.urls if s != "n2"}
    nem.apply(Event(8, 4, "end", "resp_loss", {}))
    nem.apply(Event(9, 5, "start", "bridge", {"order": [0, 1, 2, 3, 4]}))
    blocked = _blocked(net)
    assert ("n0", "n3") in blocked and ("n2", "n0") not in blocked and ("n2", "n4") not in blocked
    nem.apply(Event(10, 5, "end", "bridge", {}))
    nem.apply(Event(11, 6, "start", "delay", {"delay": 0.1, "jitter": 0.05, "links": "half"}))
    assert sum("delay" in v for v in net.states().values()) == 10
    nem.heal_all()
    assert set(net.states().values()) == {"ok"}
