"""Seeded fault schedules (pure: no processes, no sockets).

``make_schedule(seed, profile, n, duration)`` always returns the same list of timed events
for the same arguments, so a failure's printed seed and profile replay the same faults:

    python -m tests.nemesis.campaign --profile partition --nodes 5 --seed 1234 --duration 20

Events come in (start, end) pairs sharing a fault id. Targets are node indexes chosen by
the seed, or "leader", which the executor resolves when the event fires (and logs what it
resolved to). Faults run on up to two tracks: a process track (kill -9, SIGSTOP, storage
crash points, disk damage) and a network track (partitions, one-way loss, delay, drops), so
the "mixed" profile overlaps a process fault with a network fault but never two faults of one
track.

A profile also names the client traffic of its runs (``TRAFFIC``): the default workload, plus
large entries ("large") or hostile requests ("hostile") mixed in.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from typing import Optional

PROC_KINDS = ("kill", "pause", "crash", "disk", "slowloris")
NET_KINDS = ("isolate", "split", "oneway", "resp_loss", "bridge", "delay", "drop")

PROFILES = {
    # name: (process kinds, network kinds)
    "none": ((), ()),                    # baseline: the workload alone, no faults
    "kill": (("kill",), ()),
    "pause": (("pause",), ()),
    "partition": ((), ("isolate", "split", "oneway", "resp_loss", "bridge")),
    "crash": (("crash", "kill"), ()),
    "disk": (("disk",), ()),
    "net": ((), ("delay", "drop")),
    "large": (("kill", "pause"), ()),
    "hostile": (("kill", "slowloris"), ()),
    "mixed": (("kill", "pause", "crash", "disk", "slowloris"), NET_KINDS),
}
# Client traffic added to the default workload, per profile.
TRAFFIC = {"large": ("large",), "hostile": ("hostile",)}

CRASH_POINTS = ("wal_before_fsync", "snapshot_before_truncate", "snapshot_before_rename")
DISK_DAMAGE = ("wal", "snap", "delete_snap")


@dataclass
class Event:
    t: float                 # seconds after the workload started
    fault: int               # fault id (start and end share it)
    phase: str               # "start" | "end"
    kind: str                # one of PROC_KINDS + NET_KINDS
    args: dict = field(default_factory=dict)

    def describe(self) -> str:
        a = " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}"
                     for k, v in sorted(self.args.items()))
        return f"t={self.t:7.3f} #{self.fault:<3d} {self.phase:5s} {self.kind:9s} {a}".rstrip()


@dataclass
class Schedule:
    seed: int
    profile: str
    n: int
    duration: float
    snapshot_every: Optional[int]
    events: list
    traffic: tuple = ()

    def header(self) -> str:
        traffic = f" traffic={'+'.join(self.traffic)}" if self.traffic else ""
        return (f"seed={self.seed} profile={self.profile} nodes={self.n} "
                f"duration={self.duration:g}s snapshot_every={self.snapshot_every}{traffic}")

    def replay_command(self) -> str:
        return (f"python -m tests.nemesis.campaign --seed {self.seed} --profile "
                f"{self.profile} --nodes {self.n} --duration {self.duration:g}")

    def format(self) -> str:
        lines = [f"schedule: {self.header()}",
                 f"replay:   {self.replay_command()}"]
        lines += ["  " + e.describe() for e in self.events]
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _pick_target(rng: random.Random, n: int, p_leader: float = 0.5):
    return "leader" if rng.random() < p_leader else rng.randrange(n)


def _fault_args(kind: str, rng: random.Random, n: int) -> dict:
    minority = (n - 1) // 2
    if kind == "kill":
        # usually one node, sometimes a whole minority (5 nodes: two)
        if minority >= 2 and rng.random() < 0.3:
            return {"targets": sorted(rng.sample(range(n), minority))}
        return {"targets": [_pick_target(rng, n)]}
    if kind == "pause":
        return {"targets": [_pick_target(rng, n)]}
    if kind == "crash":
        point = rng.choices(CRASH_POINTS, weights=(3, 2, 1))[0]
        hit = rng.randint(1, 15) if point == "wal_before_fsync" else rng.randint(1, 2)
        return {"target": _pick_target(rng, n, 0.6), "point": point, "hit": hit}
    if kind == "disk":
        # One bit anywhere in a file, or (header) in a record header, where a confused
        # torn-tail check would look; where exactly is resolved against the files when the
        # fault fires (see disk.plan_damage).
        return {"target": _pick_target(rng, n, 0.4), "stop": rng.choice(["term", "kill"]),
                "damage": rng.choices(DISK_DAMAGE, weights=(5, 3, 2))[0],
                "file": round(rng.random(), 4), "pos": round(rng.random(), 6),
                "bit": rng.randrange(64), "header": rng.random() < 0.3}
    if kind == "slowloris":
        return {"target": _pick_target(rng, n, 0.5)}
    if kind == "isolate":
        return {"target": _pick_target(rng, n, 0.7)}
    if kind == "split":
        size = rng.randint(1, minority)
        return {"minority": sorted(rng.sample(range(n), size)),
                "with_leader": rng.random() < 0.5}
    if kind == "oneway":
        # the node can only send ("out" blocked = cannot send; "in" blocked = deaf)
        return {"target": _pick_target(rng, n, 0.7), "blocked": rng.choice(["in", "out"])}
    if kind == "resp_loss":
        return {"target": _pick_target(rng, n, 0.7), "side": rng.choice(["in", "out"])}
    if kind == "bridge":
        order = list(range(n))
        rng.shuffle(order)
        return {"order": order}
    if kind == "delay":
        return {"delay": round(rng.uniform(0.02, 0.4), 3),
                "jitter": round(rng.uniform(0.0, 0.3), 3),
                "links": "all" if rng.random() < 0.5 else "half"}
    if kind == "drop":
        return {"prob": round(rng.uniform(0.05, 0.3), 3),
                "links": "all" if rng.random() < 0.5 else "half"}
    raise ValueError(kind)


_DURATIONS = {
    "kill": (0.5, 4.0), "pause": (0.3, 3.0), "crash": (2.0, 6.0), "disk": (1.0, 3.0),
    "slowloris": (2.0, 5.0),
    "isolate": (1.0, 4.0), "split": (1.0, 4.0), "oneway": (1.0, 4.0),
    "resp_loss": (1.0, 3.0), "bridge": (1.5, 4.0), "delay": (1.0, 4.0), "drop": (1.0, 4.0),
}


def make_schedule(seed: int, profile: str, n: int, duration: float,
                  warmup: float = 1.0, quiet_tail: float = 1.0) -> Schedule:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; one of {sorted(PROFILES)}")
    rng = random.Random(f"{seed}/{profile}/{n}/{duration:g}")
    proc_kinds, net_kinds = PROFILES[profile]
    if n < 5:
        net_kinds = tuple(k for k in net_kinds if k != "bridge")
    uses_snapshots = "crash" in proc_kinds or "disk" in proc_kinds
    snapshot_every = rng.choice((20, 30, 50)) if uses_snapshots else None
    events: list = []
    fid = 0
    for kinds in (proc_kinds, net_kinds):
        if not kinds:
            continue
        t = warmup + rng.uniform(0, 1.0)
        while True:
            kind = rng.choice(kinds)
            lo, hi = _DURATIONS[kind]
            d = round(rng.uniform(lo, hi), 3)
            if t + d > duration - quiet_tail:
                break
            fid += 1
            args = _fault_args(kind, rng, n)
            events.append(Event(round(t, 3), fid, "start", kind, args))
            events.append(Event(round(t + d, 3), fid, "end", kind, {}))
            t += d + rng.uniform(0.5, 3.0)
    events.sort(key=lambda e: (e.t, e.phase != "end", e.fault))
    return Schedule(seed, profile, n, duration, snapshot_every, events,
                    TRAFFIC.get(profile, ()))
