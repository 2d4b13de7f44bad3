"""Deterministic simulator for raft_core: many nodes, one seeded random schedule.

The network loses, duplicates, delays and reorders messages; nodes crash (losing
everything not persisted) and restart; partitions come and go. After every step the
invariants of the Raft paper (Figure 3) are checked:
  election safety, log matching, leader completeness, state-machine safety,
plus read-index linearizability (a confirmed read covers every acknowledged write)
and, once the faults stop, liveness (a leader emerges and every node catches up).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from raft_core import APPEND_REQ, LEADER, SNAP_REQ, NotLeader, RaftCore

HEARTBEAT = 1.0
ELECTION = 5.0
DT = 0.25


class InvariantViolation(AssertionError):
    pass


@dataclass
class Disk:
    term: int = 0
    vote: str | None = None
    snap_index: int = 0
    snap_term: int = 0
    snap_data: tuple = ()
    log: list = field(default_factory=list)  # [(term, cmd)] after the snapshot


class SimNode:
    def __init__(self, sim: "Simulation", node_id: str, peers: list[str]):
        self.sim, self.id, self.peers = sim, node_id, peers
        self.disk = Disk()
        self.up = False
        self.core: RaftCore | None = None
        self.applied: list = []  # the state machine: commands in order
        self.pending: dict[int, tuple[int, object]] = {}  # index -> (term, cmd) proposed here

    def start(self) -> None:
        d = self.disk
        self.core = RaftCore(self.id, self.peers, election_timeout=ELECTION, heartbeat_interval=HEARTBEAT,
                             now=self.sim.now, rng=random.Random(self.sim.rng.random()),
                             term=d.term, voted_for=d.vote, snap_index=d.snap_index, snap_term=d.snap_term,
                             entries=list(d.log))
        self.applied = list(d.snap_data)
        self.pending = {}
        self.up = True

    def crash(self) -> None:
        self.up = False
        self.core = None

    def process_ready(self) -> None:
        core, d, sim = self.core, self.disk, self.sim
        rd = core.ready()
        if rd.empty():
            return
        early = [] if rd.hard_state else [m for m in rd.messages if m["type"] in (APPEND_REQ, SNAP_REQ)]
        for msg in early:  # the runtime ships a leader's entries while it fsyncs them
            sim.send(self.snapshot_filled(msg))
        if early and rd.entries and sim.faults and sim.rng.random() < 0.01:
            sim.events.append(f"t={sim.now:.2f} crash {self.id} before its fsync")
            self.crash()
            return
        if rd.hard_state:
            d.term, d.vote = rd.hard_state
        if rd.snapshot is not None:
            d.snap_index, d.snap_term = rd.snapshot["last_index"], rd.snapshot["last_term"]
            d.snap_data = tuple(rd.snapshot["data"])
            d.log = []
            self.applied = list(d.snap_data)
        if rd.entries:
            first = rd.entries[0][0]
            del d.log[first - d.snap_index - 1:]
            assert len(d.log) == first - d.snap_index - 1, "persisted log must be contiguous"
            d.log.extend((t, c) for _, t, c in rd.entries)
        for msg in rd.messages:
            if not any(msg is m for m in early):
                sim.send(self.snapshot_filled(msg))
        for index, term, cmd in rd.committed:
            if index != len(self.applied) + 1:
                raise InvariantViolation(f"{self.id} applies {index} after {len(self.applied)}")
            sim.record_apply(self, index, term, cmd)
            self.applied.append(cmd)
            mine = self.pending.pop(index, None)
            if mine is not None and mine == (term, cmd):
                sim.acked(index)
        for read_id, index in rd.reads:
            sim.check_read(self, read_id, index)
        core.advance(rd)
        sim.record_commits(self)

    def snapshot_filled(self, msg: dict) -> dict:
        """Like the runtime, send the newest durable snapshot with an InstallSnapshot request."""
        if msg["type"] != SNAP_REQ:
            return msg
        d = self.disk
        return dict(msg, last_index=d.snap_index, last_term=d.snap_term, data=d.snap_data)

    def maybe_snapshot(self) -> None:
        core, d = self.core, self.disk
        index = len(self.applied)
        if index > d.snap_index and index == core.applied_handed:
            term = core.term_at(index)
            d.snap_data = tuple(self.applied)
            d.log = d.log[index - d.snap_index:]
            d.snap_index, d.snap_term = index, term
            core.compact(index, term)


class Simulation:
    def __init__(self, seed: int, nodes: int = 3, steps: int = 400, faults: bool = True):
        self.seed = seed
        self.rng = random.Random(seed)
        self.now = 0.0
        self.steps = steps
        self.faults = faults
        ids = [f"n{i}" for i in range(nodes)]
        self.nodes = {i: SimNode(self, i, [p for p in ids if p != i]) for i in ids}
        self.net: list[tuple[float, int, dict]] = []
        self.msg_seq = 0
        self.cut: set[tuple[str, str]] = set()  # directed links that drop everything
        self.leaders: dict[int, str] = {}
        self.committed: dict[int, tuple[int, object]] = {}  # index -> (term, cmd) as applied
        self.commit_terms: dict[int, int] = {}  # index -> term of the leader that committed it
        self.max_acked = 0
        self.reads: dict[int, int] = {}  # read id -> max acked index when the read was issued
        self.next_cmd = 0
        self.events: list[str] = []
        self.p_drop = self.rng.choice([0.0, 0.05, 0.2]) if faults else 0.0
        self.p_dup = self.rng.choice([0.0, 0.05]) if faults else 0.0
        self.snapshot_every = self.rng.choice([5, 20, 1000])

    # ------------------------------------------------------------- network
    def send(self, msg: dict) -> None:
        if (msg["from"], msg["to"]) in self.cut or self.rng.random() < self.p_drop:
            if msg["type"] == SNAP_REQ:  # the runtime's sender reports a snapshot it failed to deliver
                self.msg_seq += 1
                report = {"type": "snapshot_failed", "to": msg["from"], "peer": msg["to"]}
                self.net.append((self.now + ELECTION / 2, self.msg_seq, report))
            return
        copies = 2 if self.rng.random() < self.p_dup else 1
        for _ in range(copies):
            self.msg_seq += 1
            delay = self.rng.choice([0.0, DT, DT, 2 * DT, 6 * DT])
            self.net.append((self.now + delay, self.msg_seq, msg))

    def deliver_due(self) -> None:
        due = [m for m in self.net if m[0] <= self.now]
        self.net = [m for m in self.net if m[0] > self.now]
        self.rng.shuffle(due)
        for _, _, msg in due:
            node = self.nodes[msg["to"]]
            if not node.up:
                continue
            if msg["type"] == "snapshot_failed":
                node.core.snapshot_failed(msg["peer"])
            else:
                node.core.step(msg)
            self.observe(node)

    # ------------------------------------------------------------- checks
    def observe(self, node: SimNode) -> None:
        core = node.core
        if core.role == LEADER:
            holder = self.leaders.setdefault(core.term, node.id)
            if holder != node.id:
                raise InvariantViolation(f"two leaders in term {core.term}: {holder} and {node.id}")
            if not getattr(core, "_sim_checked_term", None) == core.term:
                core._sim_checked_term = core.term
                for index, cterm in self.commit_terms.items():
                    if cterm < core.term:
                        expected = self.committed.get(index)
                        if index > core.snap_index and (core.term_at(index) is None or
                                                        (expected and core.entry(index) != expected)):
                            raise InvariantViolation(
                                f"leader {node.id} of term {core.term} lacks entry {index} committed in term {cterm}")

    def record_commits(self, node: SimNode) -> None:
        core = node.core
        if core.role == LEADER:
            for index in range(max(self.commit_terms, default=0) + 1, core.commit_index + 1):
                self.commit_terms.setdefault(index, core.term)

    def record_apply(self, node: SimNode, index: int, term: int, cmd) -> None:
        seen = self.committed.setdefault(index, (term, cmd))
        if seen != (term, cmd):
            raise InvariantViolation(f"{node.id} applied {(term, cmd)} at {index}, another node applied {seen}")

    def acked(self, index: int) -> None:
        self.max_acked = max(self.max_acked, index)

    def check_read(self, node: SimNode, read_id: int, index: int) -> None:
        need = self.reads.pop(read_id, None)
        if need is not None and index < need:
            raise InvariantViolation(f"read {read_id} at {node.id} got index {index} < acknowledged {need}")

    def check_log_matching(self) -> None:
        cores = [n.core for n in self.nodes.values() if n.up]
        for a in cores:
            for b in cores:
                if a is b:
                    continue
                lo = max(a.snap_index, b.snap_index) + 1
                hi = min(a.last_index(), b.last_index())
                agree = False
                for i in range(hi, lo - 1, -1):
                    if agree:
                        if a.entry(i) != b.entry(i):
                            raise InvariantViolation(f"log matching broken at {i} between {a.id} and {b.id}")
                    elif a.term_at(i) == b.term_at(i):
                        agree = a.entry(i) == b.entry(i)
                        if not agree:
                            raise InvariantViolation(f"same term, different entry at {i}: {a.id} {b.id}")

    # ------------------------------------------------------------- schedule
    def fault_step(self) -> None:
        rng = self.rng
        r = rng.random()
        ids = list(self.nodes)
        if r < 0.02:
            node = self.nodes[rng.choice(ids)]
            if node.up:
                node.crash()
                self.events.append(f"t={self.now:.2f} crash {node.id}")
        elif r < 0.06:
            for node in self.nodes.values():
                if not node.up and rng.random() < 0.5:
                    node.start()
                    self.events.append(f"t={self.now:.2f} restart {node.id}")
        elif r < 0.075 and len(ids) > 1:
            rng.shuffle(ids)
            side = set(ids[:rng.randint(1, len(ids) - 1)])
            self.cut = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
            one_way = rng.random() < 0.3  # only what leaves `side` is lost
            if one_way:
                self.cut = {(a, b) for (a, b) in self.cut if a in side}
            self.events.append(f"t={self.now:.2f} partition {sorted(side)} one_way={one_way}")
        elif r < 0.1:
            self.cut = set()
            self.events.append(f"t={self.now:.2f} heal")

    def client_step(self) -> None:
        for node in self.nodes.values():
            if not node.up or node.core.role != LEADER:
                continue
            if self.rng.random() < 0.5:
                self.next_cmd += 1
                cmd = {"op": "set", "v": self.next_cmd}
                try:
                    index, term = node.core.propose(cmd)
                    node.pending[index] = (term, cmd)
                except NotLeader:
                    pass
            if self.rng.random() < 0.2:
                self.next_cmd += 1
                self.reads[self.next_cmd] = self.max_acked
                node.core.read_index(self.next_cmd)

    def step(self, faults: bool, clients: bool = True) -> None:
        self.now += DT
        if faults:
            self.fault_step()
        for node in self.nodes.values():
            if node.up:
                node.core.tick(self.now)
                self.observe(node)
        if clients:
            self.client_step()
        self.deliver_due()
        for node in self.nodes.values():
            if node.up:
                node.process_ready()
            if node.up:  # it may have crashed mid-ready
                self.observe(node)
                if len(node.applied) - node.disk.snap_index >= self.snapshot_every:
                    node.maybe_snapshot()

    def run(self) -> "Simulation":
        for node in self.nodes.values():
            node.start()
        for i in range(self.steps):
            self.step(self.faults)
            if i % 25 == 0:
                self.check_log_matching()
        # Heal everything, stop the clients and demand progress: one leader that has committed
        # an entry of its term, and every node caught up with it.
        self.cut = set()
        self.p_drop = self.p_dup = 0.0
        self.faults = False
        for node in self.nodes.values():
            if not node.up:
                node.start()
        self.events.append(f"t={self.now:.2f} heal all")
        deadline = self.now + 20 * ELECTION
        while self.now < deadline:
            self.step(faults=False, clients=False)
            leaders = [n for n in self.nodes.values() if n.core.role == LEADER]
            if len(leaders) == 1 and leaders[0].core.commit_index >= leaders[0].core.noop_index > 0:
                top = leaders[0].core.commit_index
                if all(len(n.applied) >= top for n in self.nodes.values()):
                    break
        else:
            raise InvariantViolation("no progress after healing: " + ", ".join(
                f"{n.id}:{n.core.role} t{n.core.term} c{n.core.commit_index} a{len(n.applied)}"
                for n in self.nodes.values()))
        self.check_log_matching()
        return self


def run_schedule(seed: int) -> Simulation:
    rng = random.Random(seed)
    sim = Simulation(seed, nodes=rng.choice([1, 3, 3, 5]), steps=rng.choice([150, 300]))
    try:
        return sim.run()
    except AssertionError as exc:
        tail = "\n  ".join(sim.events[-15:])
        raise InvariantViolation(f"seed={seed}: {exc}\n  last events:\n  {tail}\n"
                                 f"replay: RAFT_SIM_SEED={seed} pytest tests/test_raft_sim.py -k replay") from exc
