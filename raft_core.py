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

Log indexes start at 1. `snap_index`/`snap_term` describe the last entry folded into the
latest durable snapshot; the in-memory log holds the entries after it.
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
REQUESTS = (VOTE_REQ, APPEND_REQ, SNAP_REQ)

NOOP = {"op": "noop"}
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

    def empty(self) -> bool:
        return not (self.hard_state or self.snapshot or self.entries or self.messages
                    or self.committed or self.reads or self.failed_reads)


class RaftCore:
    def __init__(self, node_id: str, peers: list[str], *, election_timeout: float,
                 heartbeat_interval: float, now: float, rng: random.Random | None = None,
                 term: int = 0, voted_for: str | None = None,
                 snap_index: int = 0, snap_term: int = 0,
                 entries: list[tuple[int, Any]] | None = None,
                 first_election_timeout: float | None = None,
                 entry_size: Callable[[Any], int] = _unsized):
        """`entries` are the durable log entries after the snapshot, as (term, command).
        `entry_size(command)` is a command's encoded size, for batching AppendEntries by bytes;
        it is asked only for entries whose size `propose` was not given (loaded or received).

        Elections start with a pre-vote (Raft thesis §9.6): a node whose election timer fires asks
        its peers whether they would vote for it, without raising its term; only when a majority
        would (its log is up to date and they have not heard from a leader within an election
        timeout) does it start a real election. A node that cannot win, such as a restarted
        follower waiting for a snapshot, then never raises the cluster's term and so never deposes
        a working leader."""
        self.id = node_id
        self.peers = [p for p in peers if p != node_id]
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
        return (len(self.peers) + 1) // 2 + 1

    def _random_timeout(self) -> float:
        return self.election_timeout * (1.0 + self.rng.random())

    def _append(self, term: int, command: Any, size: int | None = None) -> int:
        self.log.append((term, command, size))
        index = self.last_index()
        if self._unstable_from is None or index < self._unstable_from:
            self._unstable_from = index
        return index

    def _truncate_from(self, index: int) -> None:
        if index <= self.commit_index:
            raise RaftSafetyError(f"truncating the log at {index} would drop committed entries "
                                  f"(commit index {self.commit_index})")
        del self.log[index - self.snap_index - 1:]
        self.stable_index = min(self.stable_index, index - 1)
        if self._unstable_from is not None and self._unstable_from > index:
            self._unstable_from = index

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

    def _start_prevote(self) -> None:
        self.prevoting = True
        self.pre_votes = {self.id}
        self.election_deadline = self.now + self._random_timeout()
        for peer in self.peers:
            # Stands for the term we would run in; our own term is unchanged.
            self._send(peer, {"type": VOTE_REQ, "pre": True, "term": self.term + 1,
                              "last_index": self.last_index(), "last_term": self.last_term(),
                              "rid": self._next_rid()})

    def _on_prevote_req(self, msg: dict) -> None:
        up_to_date = (msg["last_term"], msg["last_index"]) >= (self.last_term(), self.last_index())
        leader_alive = self.role == LEADER or (
            self.leader_id is not None and self.now - self.leader_contact < self.election_timeout)
        grant = msg["term"] > self.term and up_to_date and not leader_alive
        self._reply(msg, {"type": VOTE_RESP, "pre": True, "granted": grant,
                          "term": msg["term"] if grant else self.term})

    def _on_prevote_resp(self, msg: dict) -> None:
        if msg["granted"]:
            if self.prevoting and self.role != LEADER and msg["term"] == self.term + 1:
                self.pre_votes.add(msg["from"])
                if len(self.pre_votes) >= self.quorum():
                    self._start_election()
        elif msg["term"] > self.term:
            self._become_follower(msg["term"], None, reset_timer=False)

    def _start_election(self) -> None:
        self.prevoting = False
        self._set_term(self.term + 1)
        self.role = CANDIDATE
        self.leader_id = None
        self.voted_for = self.id
        self._hs_dirty = True
        self.votes = {self.id}
        self.election_deadline = self.now + self._random_timeout()
        if len(self.votes) >= self.quorum():
            self._become_leader()
            return
        for peer in self.peers:
            self._send(peer, {"type": VOTE_REQ, "last_index": self.last_index(),
                              "last_term": self.last_term(), "rid": self._next_rid()})

    def _become_leader(self) -> None:
        self.role = LEADER
        self.leader_id = self.id
        self.leader_since = self.now
        self.progress = {peer: Progress(next=self.last_index() + 1, last_ack=self.now) for peer in self.peers}
        self.seq = 0
        self.pending_reads = []
        # A no-op of the new term lets the leader commit earlier-term entries and serve reads.
        self.noop_index = self._append(self.term, NOOP)
        self.next_heartbeat = self.now  # announce ourselves at once
        self._maybe_commit()

    # ----------------------------------------------------------------- inputs
    def tick(self, now: float) -> None:
        self.now = now
        if self.role == LEADER:
            # Check quorum: a leader cut off from a majority steps down rather than linger.
            if now - self.leader_since >= self.election_timeout:
                recent = 1 + sum(1 for pr in self.progress.values() if now - pr.last_ack < self.election_timeout)
                if recent < self.quorum():
                    self._become_follower(self.term, None)
                    return
            retry_after = max(2 * self.heartbeat_interval, self.election_timeout / 2)
            for pr in self.progress.values():
                limit = SNAPSHOT_RETRY if pr.snapshot_inflight else retry_after
                if pr.inflight_since is not None and now - pr.inflight_since >= limit:
                    pr.inflight_since = None  # presumed lost; send again
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self.heartbeat_interval
                self._broadcast(heartbeat=True)
        elif now >= self.election_deadline:
            if self.quorum() > 1:
                self._start_prevote()
            else:
                self._start_election()

    def propose(self, command: Any, size: int | None = None) -> tuple[int, int]:
        """Append a command (of encoded `size`, when known) to the leader's log; returns
        (index, term). Raises NotLeader."""
        if self.role != LEADER:
            raise NotLeader(self.leader_id)
        index = self._append(self.term, command, size)
        return index, self.term  # sent by the next ready(), batched with its neighbours

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
        if sender not in self.peers:
            return
        mtype = msg.get("type")
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
        up_to_date = (msg["last_term"], msg["last_index"]) >= (self.last_term(), self.last_index())
        grant = (msg["term"] == self.term and self.voted_for in (None, msg["from"]) and up_to_date)
        if grant:
            if self.voted_for != msg["from"]:
                self.voted_for = msg["from"]
                self._hs_dirty = True
            self.election_deadline = self.now + self._random_timeout()
        self._reply(msg, {"type": VOTE_RESP, "granted": grant})

    def _on_vote_resp(self, msg: dict) -> None:
        if self.role != CANDIDATE or msg["term"] != self.term or not msg["granted"]:
            return
        self.votes.add(msg["from"])
        if len(self.votes) >= self.quorum():
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
        pr = self.progress[peer]
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
            self._send(peer, {"type": SNAP_REQ, "last_index": self.snap_index,
                              "last_term": self.snap_term, "seq": self.seq, "rid": self._next_rid()})
            return
        prev = nxt - 1
        self._send(peer, {"type": APPEND_REQ, "prev_index": prev, "prev_term": self.term_at(prev),
                          "entries": self._batch(nxt), "commit": self.commit_index, "seq": self.seq,
                          "rid": self._next_rid()})

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
        matches = sorted([self.stable_index] + [pr.match for pr in self.progress.values()], reverse=True)
        candidate = matches[self.quorum() - 1]
        # Only entries of the current term are committed by counting replicas (Raft §5.4.2).
        if candidate > self.commit_index and self.term_at(candidate) == self.term:
            self.commit_index = candidate
            self._release_reads()

    def _release_reads(self) -> None:
        if self.role != LEADER or not self.pending_reads or self.commit_index < self.noop_index:
            return
        still = []
        for read_id, required, index in self.pending_reads:
            acks = 1 + sum(1 for pr in self.progress.values() if pr.acked_seq >= required)
            if acks >= self.quorum():
                self._reads_done.append((read_id, max(index, self.noop_index)))
            else:
                still.append((read_id, required, index))
        self.pending_reads = still
