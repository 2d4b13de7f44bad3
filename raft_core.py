"""Pure Raft consensus core.

No threads, sockets, clocks or disk: the runtime feeds it messages (`step`), time (`tick`)
and proposals (`propose`, `read_index`), then takes a `Ready` that says what to persist,
what to send and what to apply, and calls `advance` once the persisting is done.

Rules the runtime must follow (they make the safety arguments below hold):
  1. Persist `ready.hard_state`, `ready.snapshot` and `ready.entries` durably (fsync)
     before sending any of `ready.messages`; the one exception is a leader's AppendEntries
     and InstallSnapshot requests in a Ready without a hard-state change, which may go out
     while the leader writes (Raft §10.2.1).
  2. Apply `ready.committed` in order, and a received `ready.snapshot` before them.
  3. Call `advance(ready)` after persisting; only then does the leader count its own copy.
  4. Route `ready.messages` by the member list in `ready.members` when it is set (a new member
     gets messages in the same Ready that adds it); persist `ready.bootstrap_members` before
     sending (see Ready); store `config_at(index)` in the meta of a snapshot taken at `index`
     and put it in the "members" of an InstallSnapshot sending that snapshot.

Log indexes start at 1. `snap_index`/`snap_term` describe the last entry folded into the
latest durable snapshot; the in-memory log holds the entries after it.

Membership (Raft thesis ch. 4, single-server changes): the configuration is data in the log,
`{"op": "config", "members": [{"id", "url", "role": "voter"|"learner"}, ...]}`, and takes effect
as soon as it is in a node's log, committed or not; a snapshot carries the configuration at its
index. Only voters campaign and count in a quorum (commit, read index, check-quorum); learners
just receive the log. The state machine skips config entries, like the leader's no-op.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Callable

FOLLOWER = "follower"
CANDIDATE = "candidate"
LEADER = "leader"

# Message types. Requests carry "rid" which the response echoes, so an HTTP transport
# can pair them.
VOTE_REQ = "vote_req"
VOTE_RESP = "vote_resp"
APPEND_REQ = "append_req"
APPEND_RESP = "append_resp"
SNAP_REQ = "snap_req"
SNAP_RESP = "snap_resp"
TIMEOUT_NOW = "timeout_now"  # leadership transfer: the target campaigns at once (thesis 3.10)
REQUESTS = (VOTE_REQ, APPEND_REQ, SNAP_REQ, TIMEOUT_NOW)  # TimeoutNow has no reply

NOOP = {"op": "noop"}
CONFIG = "config"  # the "op" of a configuration entry
VOTER = "voter"
LEARNER = "learner"
# An AppendEntries message carries at most MAX_BATCH entries and MAX_APPEND_BYTES of encoded
# entries (etcd's MaxSizePerMsg), and always at least one entry, so an entry of any size gets through.
MAX_BATCH = 2048
MAX_APPEND_BYTES = 1024 * 1024
SNAPSHOT_RETRY = 30.0  # an InstallSnapshot in flight is presumed lost only after this (the
                       # transport's timeout for it); the runtime reports a failed one at once


class NotLeader(Exception):
    def __init__(self, leader: str | None):
        super().__init__(f"not leader (leader is {leader})")
        self.leader = leader


class RaftSafetyError(RuntimeError):
    """A step would break a safety property of Raft; the runtime must stop rather than go on."""


class ConfigRefused(Exception):
    """A membership change or leadership transfer the leader cannot start now (or at all)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class TransferInProgress(Exception):
    """A leadership transfer is under way: proposals wait until it ends (at most an election timeout)."""

    def __init__(self, target: str):
        super().__init__(f"leadership is being transferred to {target}")
        self.target = target


def is_config(command: Any) -> bool:
    return isinstance(command, dict) and command.get("op") == CONFIG


def normalize_members(members: list[dict]) -> list[dict]:
    """Members as {"id", "url", "role"} only; ValueError for a malformed list."""
    out, seen = [], set()
    for m in members:
        if not (isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]
                and isinstance(m.get("url"), str) and m.get("role") in (VOTER, LEARNER)):
            raise ValueError(f"malformed member {m!r}: needs a string id and url and a role voter|learner")
        if m["id"] in seen:
            raise ValueError(f"member {m['id']} is listed twice")
        seen.add(m["id"])
        out.append({"id": m["id"], "url": m["url"], "role": m["role"]})
    return out


class ConfigHistory:
    """The configurations a node's log holds: the one at the snapshot (or the bootstrap one),
    then one per config entry after it. The newest is the one in effect."""

    def __init__(self, snap_index: int, members: list[dict]):
        self.changes: list[tuple[int, list[dict]]] = [(snap_index, members)]

    @property
    def current(self) -> tuple[int, list[dict]]:
        return self.changes[-1]

    def at(self, index: int) -> list[dict]:
        if index < self.changes[0][0]:
            raise ValueError(f"the configuration at {index} is compacted away (snapshot at {self.changes[0][0]})")
        return next(members for i, members in reversed(self.changes) if i <= index)

    def appended(self, index: int, members: list[dict]) -> None:
        self.changes.append((index, members))

    def truncated(self, index: int) -> bool:
        """Drop the configurations of entries from `index` on; True if the one in effect changed."""
        keep = [c for c in self.changes[1:] if c[0] < index]
        changed = len(keep) != len(self.changes) - 1
        self.changes[1:] = keep
        return changed

    def compacted(self, index: int) -> None:
        self.changes = [(index, self.at(index))] + [c for c in self.changes if c[0] > index]


def _unsized(command: Any) -> int:
    """Without a size function, entries of unknown size count nothing: only MAX_BATCH bounds a batch."""
    return 0


@dataclass(slots=True)
class Progress:
    """The leader's view of one follower (etcd's tracker.Progress)."""
    next: int  # next index to send
    match: int = 0  # highest index known to be replicated there
    inflight_since: float | None = None  # when the one request in flight was sent
    snapshot_inflight: bool = False  # that request is an InstallSnapshot
    last_ack: float = 0.0  # when the follower last answered (check-quorum)
    acked_seq: int = 0  # highest heartbeat sequence it acknowledged (read-index)


@dataclass
class Ready:
    hard_state: tuple[int, str | None] | None = None  # (term, voted_for) when changed
    snapshot: dict | None = None  # received snapshot message to persist and apply
    entries: list[tuple[int, int, Any]] = field(default_factory=list)  # (index, term, cmd), may overwrite
    messages: list[dict] = field(default_factory=list)
    committed: list[tuple[int, int, Any]] = field(default_factory=list)
    reads: list[tuple[Any, int]] = field(default_factory=list)  # (read_id, index) confirmed
    failed_reads: list[Any] = field(default_factory=list)
    members: list[dict] | None = None  # the configuration in effect, when it changed
    # The configuration at index 0 (in no log entry), when learned from the leader: persist it
    # before sending the messages, and pass it as `members` at restart while there is no snapshot.
    bootstrap_members: list[dict] | None = None

    def empty(self) -> bool:
        return not (self.hard_state or self.snapshot or self.entries or self.messages
                    or self.committed or self.reads or self.failed_reads or self.members is not None
                    or self.bootstrap_members is not None)


class RaftCore:
    def __init__(self, node_id: str, members: list[dict], *, election_timeout: float,
                 heartbeat_interval: float, now: float, rng: random.Random | None = None,
                 term: int = 0, voted_for: str | None = None,
                 snap_index: int = 0, snap_term: int = 0,
                 entries: list[tuple[int, Any]] | None = None,
                 first_election_timeout: float | None = None,
                 entry_size: Callable[[Any], int] = _unsized):
        """`members` is the configuration at `snap_index` (the snapshot's, or the bootstrap one; empty
        for a node that joins and learns it from the leader); config entries in `entries` follow it.
        `entries` are the durable log entries after the snapshot, as (term, command).
        `entry_size(command)` is a command's encoded size, for batching AppendEntries by bytes;
        it is asked only for entries whose size `propose` was not given (loaded or received).

        Elections start with a pre-vote (Raft thesis §9.6): a node whose election timer fires asks
        its peers whether they would vote for it, without raising its term; only when a majority
        would (its log is up to date and they have not heard from a leader within an election
        timeout) does it start a real election. A node that cannot win, such as a restarted
        follower waiting for a snapshot, then never raises the cluster's term and so never deposes
        a working leader."""
        self.id = node_id
        self.election_timeout = election_timeout
        self.heartbeat_interval = heartbeat_interval
        self.rng = rng or random.Random()
        self.term = term
        self.voted_for = voted_for
        self.role = FOLLOWER
        self.leader_id: str | None = None
        self.snap_index = snap_index
        self.snap_term = snap_term
        self.entry_size = entry_size
        # (term, command, encoded size or None while unknown)
        self.log: list[tuple[int, Any, int | None]] = [(t, c, None) for t, c in entries or []]
        self.commit_index = snap_index
        self.applied_handed = snap_index  # last index handed out in ready.committed
        self.stable_index = self.last_index()  # everything passed in is durable
        self.now = now

        self.config = ConfigHistory(snap_index, normalize_members(members))
        for index, (_, command, _) in enumerate(self.log, snap_index + 1):
            if is_config(command):
                self.config.appended(index, normalize_members(command["members"]))
        # Derived from the configuration in effect by _use_config; read-only for the runtime.
        self.members: list[dict] = []
        self.voters: set[str] = set()
        self.learners: set[str] = set()
        self.peers: list[str] = []  # every member but us
        self.config_index = 0  # index of the configuration in effect (snap_index: the snapshot's)
        self._use_config()
        self._members_changed = False  # the runtime built us with these
        self._bootstrap_out: list[dict] | None = None  # learned from the leader, for the next Ready

        self._hs_dirty = False
        self._unstable_from: int | None = None
        self._snapshot_in: dict | None = None
        self._out: list[dict] = []
        self._reads_done: list[tuple[Any, int]] = []
        self._reads_failed: list[Any] = []
        self._rid = 0

        # Leader state.
        self.progress: dict[str, Progress] = {}
        self.seq = 0
        self.noop_index = 0
        self.leader_since = 0.0
        self.next_heartbeat = 0.0
        self.pending_reads: list[tuple[Any, int, int]] = []  # (read_id, required_seq, index)
        self.votes: set[str] = set()
        self.prevoting = False
        self.pre_votes: set[str] = set()
        self.leader_contact = float("-inf")  # when we last accepted a message from the leader
        self.transferring: str | None = None  # leadership transfer target
        self.transfer_deadline = 0.0
        self.transfer_sent = False  # TimeoutNow went out

        timeout = first_election_timeout if first_election_timeout is not None else self._random_timeout()
        self.election_deadline = now + timeout

    # ----------------------------------------------------------------- log helpers
    def last_index(self) -> int:
        return self.snap_index + len(self.log)

    def last_term(self) -> int:
        return self.log[-1][0] if self.log else self.snap_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`, or None when unknown (compacted away or beyond the log)."""
        if index == self.snap_index:
            return self.snap_term
        if index < self.snap_index or index > self.last_index():
            return None
        return self.log[index - self.snap_index - 1][0]

    def entry(self, index: int) -> tuple[int, Any]:
        term, command, _ = self.log[index - self.snap_index - 1]
        return term, command

    def quorum(self) -> int:
        return len(self.voters) // 2 + 1

    def _quorum_agrees(self, agrees: Callable[[Progress], bool]) -> bool:
        """Whether a majority of the voters agree: the leader itself if it is a voter (one being
        removed is not), and each voter peer whose progress `agrees`."""
        count = sum(1 for v in self.voters if v != self.id and agrees(self.progress[v]))
        return count + (self.id in self.voters) >= self.quorum()

    # ----------------------------------------------------------------- configuration
    def config_at(self, index: int) -> list[dict]:
        """The members in effect at `index` (snap_index <= index <= last_index), for snapshot meta."""
        if index > self.last_index():
            raise ValueError(f"index {index} is beyond the log (last index {self.last_index()})")
        return [dict(m) for m in self.config.at(index)]

    def _use_config(self) -> None:
        """Act on the configuration in effect (the newest in the log, committed or not)."""
        self.config_index, self.members = self.config.current
        self.voters = {m["id"] for m in self.members if m["role"] == VOTER}
        self.learners = {m["id"] for m in self.members if m["role"] == LEARNER}
        self.peers = [m["id"] for m in self.members if m["id"] != self.id]
        self._members_changed = True
        if self.role == LEADER:
            for peer in self.peers:
                self.progress.setdefault(peer, Progress(next=self.last_index() + 1, last_ack=self.now))
            for gone in set(self.progress) - set(self.peers):
                del self.progress[gone]
            if self.transferring is not None and self.transferring not in self.voters:
                self.transferring = None

    def _random_timeout(self) -> float:
        return self.election_timeout * (1.0 + self.rng.random())

    def _append(self, term: int, command: Any, size: int | None = None) -> int:
        self.log.append((term, command, size))
        index = self.last_index()
        if self._unstable_from is None or index < self._unstable_from:
            self._unstable_from = index
        if is_config(command):
            self.config.appended(index, normalize_members(command["members"]))
            self._use_config()
        return index

    def _truncate_from(self, index: int) -> None:
        if index <= self.commit_index:
            raise RaftSafetyError(f"truncating the log at {index} would drop committed entries "
                                  f"(commit index {self.commit_index})")
        del self.log[index - self.snap_index - 1:]
        self.stable_index = min(self.stable_index, index - 1)
        if self._unstable_from is not None and self._unstable_from > index:
            self._unstable_from = index
        if self.config.truncated(index):
            self._use_config()

    # ----------------------------------------------------------------- role changes
    def _set_term(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._hs_dirty = True

    def _become_follower(self, term: int, leader: str | None, reset_timer: bool = True) -> None:
        was_leader = self.role == LEADER
        self._set_term(term)
        self.role = FOLLOWER
        self.leader_id = leader
        self.prevoting = False
        if reset_timer or was_leader:
            self.election_deadline = self.now + self._random_timeout()
        if was_leader:
            self._reads_failed.extend(r[0] for r in self.pending_reads)
            self.pending_reads.clear()
            self.transferring = None

    def _start_prevote(self) -> None:
        self.prevoting = True
        self.pre_votes = {self.id}
        self.election_deadline = self.now + self._random_timeout()
        for peer in sorted(self.voters - {self.id}):
            # Stands for the term we would run in; our own term is unchanged.
            self._send(peer, {"type": VOTE_REQ, "pre": True, "term": self.term + 1,
                              "last_index": self.last_index(), "last_term": self.last_term(),
                              "rid": self._next_rid()})

    def _up_to_date(self, vote_req: dict) -> bool:
        """The candidate's log is at least as up to date as ours (Raft §5.4.1)."""
        return (vote_req["last_term"], vote_req["last_index"]) >= (self.last_term(), self.last_index())

    def _may_campaign(self) -> bool:
        """Voters campaign. So does a voter of the previous configuration while a newer one that
        drops it is not known to be committed: it may be the only node holding that newer entry
        (a leader removing itself, cut off before the commit), and then none could win without
        it; as leader it commits the change and steps down (the thesis lets any node campaign)."""
        if self.id in self.voters:
            return True
        previous = self.config.at(self.config_index - 1) if self.config_index > self.commit_index else []
        return any(m["id"] == self.id and m["role"] == VOTER for m in previous)

    def _leader_alive(self) -> bool:
        return self.role == LEADER or (
            self.leader_id is not None and self.now - self.leader_contact < self.election_timeout)

    def _on_prevote_req(self, msg: dict) -> None:
        grant = msg["term"] > self.term and self._up_to_date(msg) and not self._leader_alive()
        self._reply(msg, {"type": VOTE_RESP, "pre": True, "granted": grant,
                          "term": msg["term"] if grant else self.term})

    def _on_prevote_resp(self, msg: dict) -> None:
        if msg["granted"]:
            if (self.prevoting and self.role != LEADER and msg["term"] == self.term + 1
                    and msg["from"] in self.voters):
                self.pre_votes.add(msg["from"])
                if len(self.pre_votes & self.voters) >= self.quorum():
                    self._start_election()
        elif msg["term"] > self.term:
            self._become_follower(msg["term"], None, reset_timer=False)

    def _start_election(self, transfer: bool = False) -> None:
        """With `transfer`, the leader asked us to take over (TimeoutNow): voters grant even while
        they hear from that leader."""
        self.prevoting = False
        self._set_term(self.term + 1)
        self.role = CANDIDATE
        self.leader_id = None
        self.voted_for = self.id
        self._hs_dirty = True
        self.votes = {self.id}
        self.election_deadline = self.now + self._random_timeout()
        if len(self.votes & self.voters) >= self.quorum():
            self._become_leader()
            return
        for peer in sorted(self.voters - {self.id}):
            req = {"type": VOTE_REQ, "last_index": self.last_index(), "last_term": self.last_term(),
                   "rid": self._next_rid()}
            if transfer:
                req["transfer"] = True
            self._send(peer, req)

    def _become_leader(self) -> None:
        self.role = LEADER
        self.leader_id = self.id
        self.leader_since = self.now
        self.progress = {peer: Progress(next=self.last_index() + 1, last_ack=self.now) for peer in self.peers}
        self.seq = 0
        self.pending_reads = []
        self.transferring = None
        # A no-op of the new term lets the leader commit earlier-term entries and serve reads.
        self.noop_index = self._append(self.term, NOOP)
        self.next_heartbeat = self.now  # announce ourselves at once
        self._maybe_commit()

    # ----------------------------------------------------------------- inputs
    def tick(self, now: float) -> None:
        self.now = now
        if self.role == LEADER:
            # Check quorum: a leader cut off from a majority steps down rather than linger.
            if now - self.leader_since >= self.election_timeout and not self._quorum_agrees(
                    lambda pr: now - pr.last_ack < self.election_timeout):
                self._become_follower(self.term, None)
                return
            if self.transferring is not None and now >= self.transfer_deadline:
                self.transferring = None  # the target did not take over: accept proposals again
            retry_after = max(2 * self.heartbeat_interval, self.election_timeout / 2)
            for pr in self.progress.values():
                limit = SNAPSHOT_RETRY if pr.snapshot_inflight else retry_after
                if pr.inflight_since is not None and now - pr.inflight_since >= limit:
                    pr.inflight_since = None  # presumed lost; send again
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.heartbeat_interval
                self._broadcast(heartbeat=True)
        elif now >= self.election_deadline:
            if not self._may_campaign():  # a learner, or removed
                self.election_deadline = now + self._random_timeout()
            elif self.quorum() > 1:
                self._start_prevote()
            else:
                self._start_election()

    def propose(self, command: Any, size: int | None = None) -> tuple[int, int]:
        """Append a command (of encoded `size`, when known) to the leader's log; returns
        (index, term). Raises NotLeader, or TransferInProgress while leadership is handed over."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self.transferring is not None:
            raise TransferInProgress(self.transferring)
        index = self._append(self.term, command, size)
        return index, self.term  # sent by the next ready(), batched with its neighbours

    def propose_config(self, members: list[dict]) -> tuple[int, int]:
        """Propose the configuration `members` (the whole new member list); returns (index, term).
        Raises NotLeader, ValueError for a malformed list, or ConfigRefused."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        if self.transferring is not None:
            raise ConfigRefused("transfer_in_progress", f"leadership is being transferred to {self.transferring}")
        if self.commit_index < self.noop_index:
            # Until it commits an entry of its own term, a new leader may not know of a change a
            # previous leader started; a second change on top could form two disjoint majorities
            # (Ongaro, raft-dev 2015).
            raise ConfigRefused("leader_not_ready", "the leader has not committed an entry of its term yet")
        if self.config_index > self.commit_index:
            raise ConfigRefused("change_in_progress", "another membership change is not committed yet")
        members = normalize_members(members)
        old = {m["id"]: m for m in self.members}
        new = {m["id"]: m for m in members}
        changed = sorted(i for i in old.keys() | new.keys() if old.get(i) != new.get(i))
        if len(changed) > 1:
            raise ConfigRefused("not_single_change", f"one member may change at a time, not {', '.join(changed)}")
        if not any(m["role"] == VOTER for m in members):
            raise ConfigRefused("last_voter", "the configuration must keep at least one voter")
        index = self._append(self.term, {"op": CONFIG, "members": members})
        self._maybe_commit()  # a change that leaves us the only voter commits at once
        return index, self.term

    def transfer_leadership(self, target: str | None = None) -> str:
        """Hand leadership to voter `target` (None: the most up-to-date one); returns the target.
        It is brought up to date, then told to campaign at once (TimeoutNow, thesis 3.10). Until it
        wins, or one election timeout passes, proposals are refused (TransferInProgress)."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        others = sorted(self.voters - {self.id})
        if target is None:
            if not others:
                raise ConfigRefused("no_target", "there is no other voter to hand leadership to")
            target = max(others, key=lambda v: self.progress[v].match)
        elif target not in self.voters | self.learners:
            raise ConfigRefused("unknown_member", f"{target} is not a member")
        elif target not in self.voters:
            raise ConfigRefused("not_voter", f"{target} is a learner, it cannot lead")
        if target == self.id or target == self.transferring:
            return target
        self.transferring = target
        self.transfer_deadline = self.now + self.election_timeout
        self.transfer_sent = False
        self._maybe_send_timeout_now()
        self._send_append(target, heartbeat=False)
        return target

    def read_index(self, read_id: Any) -> None:
        """Ask for a linearizable read point. Answered in ready.reads or ready.failed_reads."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        self.seq += 1
        self.pending_reads.append((read_id, self.seq, self.commit_index))
        self._broadcast(heartbeat=True)
        self._release_reads()

    def step(self, msg: dict) -> None:
        sender = msg.get("from")
        mtype = msg.get("type")
        if sender is None or sender == self.id:
            return
        if mtype == VOTE_REQ:
            if sender not in self.voters and not self._up_to_date(msg):
                # A removed node (its log lacks its committed removal, so it is behind ours): it
                # must not disrupt us. A voter we do not know yet because we are behind is heard.
                return
            if msg["term"] > self.term and not (msg.get("transfer") or msg.get("pre")) and self._leader_alive():
                return  # leader stickiness (thesis 4.2.3), unless the leader itself asked for this election
        # Requests from a leader are accepted from anyone (a joining node knows no members yet);
        # replies count only where the sender has a role (a progress record, a vote as a voter).
        if msg.get("pre") and mtype in (VOTE_REQ, VOTE_RESP):
            # Pre-votes never change our term, vote or election timer.
            if mtype == VOTE_REQ:
                self._on_prevote_req(msg)
            else:
                self._on_prevote_resp(msg)
            return
        if msg["term"] > self.term:
            leader = sender if mtype in (APPEND_REQ, SNAP_REQ) else None
            # A vote request alone does not restart our election timer (only granting the vote
            # does, in _on_vote_req): otherwise a candidate whose log is too stale to win keeps
            # postponing the elections of the nodes that could, and failover takes many rounds.
            self._become_follower(msg["term"], leader, reset_timer=mtype != VOTE_REQ)
        if mtype == VOTE_REQ:
            self._on_vote_req(msg)
        elif mtype == VOTE_RESP:
            self._on_vote_resp(msg)
        elif mtype == APPEND_REQ:
            self._on_append_req(msg)
        elif mtype in (APPEND_RESP, SNAP_RESP):
            self._on_append_resp(msg)
        elif mtype == SNAP_REQ:
            self._on_snap_req(msg)
        elif mtype == TIMEOUT_NOW:
            if msg["term"] == self.term and self.role == FOLLOWER and self.id in self.voters:
                self._start_election(transfer=True)

    def snapshot_failed(self, peer: str) -> None:
        """The runtime could not deliver an InstallSnapshot to `peer`: send it again soon."""
        pr = self.progress.get(peer)
        if self.role == LEADER and pr is not None and pr.snapshot_inflight:
            pr.inflight_since = None
            pr.snapshot_inflight = False

    def compact(self, index: int, term: int) -> None:
        """The runtime durably stored a snapshot covering the log up to `index`."""
        if index <= self.snap_index or index > self.applied_handed:
            return
        if self.term_at(index) != term:
            raise RaftSafetyError(f"snapshot at {index} has term {term}, the log has {self.term_at(index)}")
        del self.log[:index - self.snap_index]
        self.snap_index, self.snap_term = index, term
        self.config.compacted(index)

    # ----------------------------------------------------------------- output
    def ready(self) -> Ready:
        rd = Ready()
        if self._hs_dirty:
            rd.hard_state = (self.term, self.voted_for)
        if self._snapshot_in is not None:
            rd.snapshot = self._snapshot_in
        if self._unstable_from is not None:
            first = self._unstable_from
            rd.entries = [(i, term, command) for i, (term, command, _) in
                          enumerate(self.log[first - self.snap_index - 1:], first)]
        if self.role == LEADER:
            self._broadcast(heartbeat=False)
        rd.messages, self._out = self._out, []
        upto = min(self.commit_index, self.stable_index)
        if upto > self.applied_handed:
            first = self.applied_handed + 1
            rd.committed = [(i, term, command) for i, (term, command, _) in
                            enumerate(self.log[first - self.snap_index - 1:upto - self.snap_index], first)]
        rd.reads, self._reads_done = self._reads_done, []
        rd.failed_reads, self._reads_failed = self._reads_failed, []
        if self._members_changed:
            rd.members, self._members_changed = [dict(m) for m in self.members], False
        rd.bootstrap_members, self._bootstrap_out = self._bootstrap_out, None
        return rd

    def advance(self, rd: Ready) -> None:
        """The runtime persisted `rd` (and handed its committed entries to the state machine)."""
        self._hs_dirty = self._hs_dirty and rd.hard_state != (self.term, self.voted_for)
        if rd.snapshot is not None and self._snapshot_in is rd.snapshot:
            self._snapshot_in = None
        if rd.entries:
            last_written = rd.entries[-1][0]
            # Only entries still in the log with the same term count as stable.
            first = rd.entries[0][0]
            if self.term_at(last_written) == rd.entries[-1][1] and self.stable_index >= first - 1:
                self.stable_index = max(self.stable_index, last_written)
            if self._unstable_from is not None and self._unstable_from >= first:
                self._unstable_from = None if last_written >= self.last_index() else last_written + 1
        if rd.committed:
            self.applied_handed = max(self.applied_handed, rd.committed[-1][0])
        if self.role == LEADER:
            self._maybe_commit()

    # ----------------------------------------------------------------- handlers
    def _send(self, to: str, msg: dict) -> None:
        msg["from"] = self.id
        msg["to"] = to
        msg.setdefault("term", self.term)  # only pre-votes carry another (the prospective) term
        self._out.append(msg)

    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _reply(self, req: dict, msg: dict) -> None:
        msg["rid"] = req.get("rid")
        self._send(req["from"], msg)

    def _on_vote_req(self, msg: dict) -> None:
        grant = msg["term"] == self.term and self.voted_for in (None, msg["from"]) and self._up_to_date(msg)
        if grant:
            if self.voted_for != msg["from"]:
                self.voted_for = msg["from"]
                self._hs_dirty = True
            self.election_deadline = self.now + self._random_timeout()
        self._reply(msg, {"type": VOTE_RESP, "granted": grant})

    def _adopt_bootstrap_members(self, members: list[dict]) -> None:
        """Take the leader's configuration at index 0 (a joining node knows none; a node started
        with a differing bootstrap list is corrected)."""
        if members == self.config.changes[0][1]:
            return
        self.config.changes[0] = (0, members)
        self._bootstrap_out = members
        if len(self.config.changes) == 1:
            self._use_config()

    def _on_vote_resp(self, msg: dict) -> None:
        if (self.role != CANDIDATE or msg["term"] != self.term or not msg["granted"]
                or msg["from"] not in self.voters):
            return
        self.votes.add(msg["from"])
        if len(self.votes & self.voters) >= self.quorum():
            self._become_leader()

    def _on_append_req(self, msg: dict) -> None:
        if msg["term"] < self.term:
            self._reply(msg, {"type": APPEND_RESP, "success": False, "hint": 0,
                              "match": 0, "seq": msg.get("seq", 0)})
            return
        # Same term: the sender is the one leader of this term.
        if self.role != FOLLOWER or self.leader_id != msg["from"]:
            self._become_follower(self.term, msg["from"])
        self.election_deadline = self.now + self._random_timeout()
        self.leader_contact, self.prevoting = self.now, False

        prev_index, prev_term = msg["prev_index"], msg["prev_term"]
        entries = msg["entries"]  # list of [term, command]
        if prev_index < self.snap_index:
            # Entries up to our snapshot are committed, hence identical to the leader's: skip them.
            skip = self.snap_index - prev_index
            if skip > len(entries):
                self._reply(msg, {"type": APPEND_RESP, "success": True, "match": self.snap_index,
                                  "hint": 0, "seq": msg.get("seq", 0)})
                return
            entries = entries[skip:]
            prev_index, prev_term = self.snap_index, self.snap_term
        local_prev_term = self.term_at(prev_index)
        if local_prev_term != prev_term:
            if local_prev_term is None:
                hint = self.last_index() + 1
            else:
                hint = prev_index
                while hint - 1 > max(self.snap_index, self.commit_index) and self.term_at(hint - 1) == local_prev_term:
                    hint -= 1
            self._reply(msg, {"type": APPEND_RESP, "success": False, "hint": hint, "match": 0,
                              "seq": msg.get("seq", 0)})
            return
        if msg["prev_index"] == 0 and self.snap_index == 0:
            self._adopt_bootstrap_members(normalize_members(msg["members"]))
        index = prev_index
        for term, command in entries:
            index += 1
            existing = self.term_at(index)
            if existing == term:
                continue
            if existing is not None:
                self._truncate_from(index)
            self._append(term, command)
        last_new = prev_index + len(entries)
        if msg["commit"] > self.commit_index:
            self.commit_index = max(self.commit_index, min(msg["commit"], last_new))
        self._reply(msg, {"type": APPEND_RESP, "success": True, "match": last_new, "hint": 0,
                          "seq": msg.get("seq", 0)})

    def _on_append_resp(self, msg: dict) -> None:
        """Also handles InstallSnapshot replies: a successful one is a match at the snapshot index."""
        if self.role != LEADER or msg["term"] != self.term:
            return
        peer = msg["from"]
        pr = self.progress.get(peer)
        if pr is None:  # no longer a member
            return
        pr.inflight_since = None
        pr.snapshot_inflight = False
        pr.last_ack = self.now
        pr.acked_seq = max(pr.acked_seq, msg.get("seq", 0))
        if msg["success"]:
            # A follower cannot match past our log: a larger claim is a faulty peer's, not believed.
            match = min(msg["match"], self.last_index())
            if match > pr.match:
                pr.match = match
            pr.next = max(pr.next, pr.match + 1)
            self._maybe_commit()
            self._maybe_send_timeout_now()
        else:
            pr.next = max(pr.match + 1, min(pr.next - 1, msg["hint"] or pr.next - 1))
        self._release_reads()
        self._send_append(peer, heartbeat=False)

    def _on_snap_req(self, msg: dict) -> None:
        if msg["term"] < self.term:
            self._reply(msg, {"type": SNAP_RESP, "success": False, "match": 0, "hint": 0,
                              "seq": msg.get("seq", 0)})
            return
        if self.role != FOLLOWER or self.leader_id != msg["from"]:
            self._become_follower(self.term, msg["from"])
        self.election_deadline = self.now + self._random_timeout()
        self.leader_contact, self.prevoting = self.now, False
        index, term = msg["last_index"], msg["last_term"]
        if index > self.commit_index and self.term_at(index) == term:
            # Our log already holds the snapshot's last entry, so it matches the leader's up to
            # there: keep it (entries after it may have been acknowledged) and commit up to it.
            self.commit_index = index
        elif index > self.commit_index:
            # Our log diverges from or falls short of the snapshot: it is replaced whole. (Nothing
            # after `index` can have been acknowledged to this leader, or the terms would match.)
            self.log = []
            self.snap_index, self.snap_term = index, term
            self.commit_index = self.applied_handed = self.stable_index = index
            self._unstable_from = None
            self._snapshot_in = msg
            self.config = ConfigHistory(index, normalize_members(msg["members"]))
            self._use_config()
        # Either way our log now matches the leader's up to `index` (committed entries agree).
        self._reply(msg, {"type": SNAP_RESP, "success": True, "match": index, "hint": 0,
                          "seq": msg.get("seq", 0)})

    # ----------------------------------------------------------------- leader internals
    def _broadcast(self, heartbeat: bool) -> None:
        for peer in self.peers:
            self._send_append(peer, heartbeat)

    def _send_append(self, peer: str, heartbeat: bool) -> None:
        """Send the peer what it lacks. One request in flight per peer: entries proposed
        meanwhile ride on the next request (batching)."""
        if self.role != LEADER:
            return
        pr = self.progress[peer]
        if pr.inflight_since is not None:
            return
        nxt = pr.next
        needs_read_ack = any(req > pr.acked_seq for _, req, _ in self.pending_reads)
        if nxt > self.last_index() and not heartbeat and not needs_read_ack:
            return
        pr.inflight_since = self.now
        pr.snapshot_inflight = nxt <= self.snap_index
        if nxt <= self.snap_index:
            # The runtime fills in the newest durable snapshot: its index, term, members and data.
            self._send(peer, {"type": SNAP_REQ, "last_index": self.snap_index, "last_term": self.snap_term,
                              "members": self.config_at(self.snap_index), "seq": self.seq,
                              "rid": self._next_rid()})
            return
        prev = nxt - 1
        msg = {"type": APPEND_REQ, "prev_index": prev, "prev_term": self.term_at(prev),
               "entries": self._batch(nxt), "commit": self.commit_index, "seq": self.seq,
               "rid": self._next_rid()}
        if prev == 0:  # the bootstrap configuration is in no entry: a joining node learns it here
            msg["members"] = self.config_at(0)
        self._send(peer, msg)

    def _batch(self, first: int) -> list[list]:
        """Entries from `first` on, as [term, command], within MAX_BATCH and MAX_APPEND_BYTES."""
        entries, room = [], MAX_APPEND_BYTES
        offset = self.snap_index + 1
        for k in range(first - offset, min(len(self.log), first - offset + MAX_BATCH)):
            term, command, size = self.log[k]
            if size is None:
                size = self.entry_size(command)
                self.log[k] = (term, command, size)
            if size > room and entries:
                break
            entries.append([term, command])
            room -= size
        return entries

    def _maybe_commit(self) -> None:
        if self.role != LEADER:
            return
        # Voters only: learners, and a leader being removed, hold copies that do not count.
        matches = sorted([self.progress[v].match for v in self.voters if v != self.id]
                         + [self.stable_index] * (self.id in self.voters), reverse=True)
        candidate = matches[self.quorum() - 1] if len(matches) >= self.quorum() else 0
        # Only entries of the current term are committed by counting replicas (Raft §5.4.2).
        if candidate > self.commit_index and self.term_at(candidate) == self.term:
            self.commit_index = candidate
            self._release_reads()
        if self.id not in self.voters and self.commit_index >= self.config_index:
            # The change that removed us (or made us a learner) is committed: hand over, step down.
            self._send_timeout_now(max(sorted(self.voters), key=lambda v: self.progress[v].match))
            self._become_follower(self.term, None)

    def _maybe_send_timeout_now(self) -> None:
        target = self.transferring
        if self.role == LEADER and target is not None and not self.transfer_sent and \
                self.progress[target].match == self.last_index():
            self.transfer_sent = True
            self._send_timeout_now(target)

    def _send_timeout_now(self, target: str) -> None:
        self._send(target, {"type": TIMEOUT_NOW, "rid": self._next_rid()})

    def _release_reads(self) -> None:
        if self.role != LEADER or not self.pending_reads or self.commit_index < self.noop_index:
            return
        still = []
        for read_id, required, index in self.pending_reads:
            if self._quorum_agrees(lambda pr: pr.acked_seq >= required):
                self._reads_done.append((read_id, max(index, self.noop_index)))
            else:
                still.append((read_id, required, index))
        self.pending_reads = still
