"""The node runtime: drives the pure Raft core with threads, timers, disk and HTTP.

Threads:
  raft loop   owns the RaftCore, the WAL and the state machine. Drains every queued event
              (proposals, messages, reads), then handles one Ready: one fsync for the whole
              batch (group commit), then sends, then applies the committed entries and
              answers the waiting clients. Applying a command is a dict update, cheaper than
              handing it to another thread (which cost ~0.5 ms of latency per write here).
  snapshotter writes pickledb snapshots off the raft loop.
  one sender per peer (transport.py), with a keep-alive HTTP connection; at most one
              AppendEntries in flight per peer, so entries proposed meanwhile are batched into
              the next request.

A single bad command never stops the loop: a command is checked (depth, encoded size) in the
proposing thread and refused there unless the WAL and AppendEntries can carry it, and a committed command whose
apply raises is an error for its client only (apply is deterministic, so every replica fails it
alike and the replicas stay identical).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from dataclasses import dataclass, field

import orjson

from raft_core import APPEND_REQ, LEADER, NOOP, REQUESTS, SNAP_REQ, NotLeader, RaftCore
from storage import Storage, StorageError
from task_state import TaskStateMachine
from transport import MAX_ENTRY_BYTES, RequestRefused, Transport

log = logging.getLogger("pickledb_cluster.node")


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    peers: list[str] = field(default_factory=list)
    data_dir: str = "data/node_4000"
    heartbeat_interval: float = 2.0
    election_timeout: float = 5.0
    first_election_timeout: float | None = None
    cluster_secret: str | None = None
    snapshot_every: int = 10000

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


class ClientError(RequestRefused):
    """A request the cluster could not serve; maps to an HTTP answer (status, code, message)."""


class Waiter:
    """One client waiting for the raft loop. A bare lock, held from creation
    until the answer is set, is several times cheaper than a threading.Event (a Condition)."""
    __slots__ = ("lock", "value", "error")

    def __init__(self):
        self.lock = threading.Lock()
        self.lock.acquire()
        self.value = None
        self.error: ClientError | None = None

    def _set(self) -> None:
        try:
            self.lock.release()
        except RuntimeError:
            pass  # answered already

    def resolve(self, value=None) -> None:
        self.value = value
        self._set()

    def fail(self, error: ClientError) -> None:
        self.error = error
        self._set()

    def wait(self, timeout: float):
        if not self.lock.acquire(timeout=timeout):
            raise ClientError(503, "unknown_outcome", "timed out waiting for the cluster; "
                              "the request may or may not have been applied", retry_after=1)
        if self.error is not None:
            raise self.error
        return self.value


def no_leader(leader: str | None = None) -> ClientError:
    return ClientError(503, "no_leader", "no leader is elected right now; retry shortly", retry_after=1)


# orjson before 3.13 wrote past its output buffer when it closed more than about 40 containers in
# a row (found with glibc's malloc checker), and encodes at most 255 levels: commands stay well
# below both, since the WAL record and AppendEntries hold a command three containers deep.
MAX_COMMAND_DEPTH = 32


def nested_deeper_than(value, limit: int) -> bool:
    """True when `value` nests dicts and lists more than `limit` levels deep (a scalar is level 0)."""
    stack = [(value, 1)] if type(value) in (dict, list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        for child in (node.values() if type(node) is dict else node):
            if type(child) is dict or type(child) is list:
                stack.append((child, depth + 1))
    return False


def encoded_size(command) -> int:
    return len(orjson.dumps(command))


def checked_size(command) -> int:
    """A proposed command's encoded size; raises ClientError unless the WAL, AppendEntries and
    snapshots can all carry it: 400 when nested over MAX_COMMAND_DEPTH levels or not encodable
    (e.g. an integer beyond 64 bits), 413 when over MAX_ENTRY_BYTES encoded."""
    if nested_deeper_than(command, MAX_COMMAND_DEPTH):
        raise ClientError(400, "invalid_request", f"the command nests more than {MAX_COMMAND_DEPTH} levels deep")
    try:
        size = encoded_size(command)
    except orjson.JSONEncodeError as exc:
        raise ClientError(400, "invalid_request", f"the command cannot be stored: {exc}")
    if size > MAX_ENTRY_BYTES:
        raise ClientError(413, "request_entity_too_large",
                          f"the command takes {size} bytes encoded; at most {MAX_ENTRY_BYTES} are allowed")
    return size


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.id = config.url
        self.stopping = threading.Event()
        routes = json.loads(os.environ.get("PICKLEDB_PEER_ROUTES") or "{}")
        self.routes = {p: routes.get(p, p) for p in config.peers}

        self.storage = Storage(config.data_dir)
        state, entries = self.storage.load()
        meta = self.storage.snapshot_meta
        self.state = TaskStateMachine()
        self.state.restore(meta["index"], meta["term"], state)
        term, vote = self.storage.hard_state
        self.core = RaftCore(self.id, config.peers, election_timeout=config.election_timeout,
                             heartbeat_interval=config.heartbeat_interval, now=time.monotonic(),
                             rng=random.Random(), term=term, voted_for=vote,
                             snap_index=meta["index"], snap_term=meta["term"], entries=entries,
                             first_election_timeout=config.first_election_timeout,
                             entry_size=encoded_size)
        log.info("node %s loaded snapshot at %d and %d log entries (term %d)",
                 self.id, meta["index"], len(entries), term)

        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[int, tuple[int, Waiter]] = {}  # log index -> (term, waiter)
        self.reads: dict[int, Waiter] = {}  # read id -> waiter, until leadership is confirmed
        self.confirmed_reads: list[tuple[int, Waiter]] = []  # (read index, waiter) until applied
        self.read_ids = itertools.count(1)
        self.replies: dict[tuple[str, int], Waiter] = {}
        self.snapshotting = False
        self.last_snapshot_index = meta["index"]
        self.changes = threading.Condition()
        self.change_seq = 0
        self.status_view: dict = {}
        self.transport = Transport(
            self.id, self.routes, secret=config.cluster_secret, election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval, stopping=self.stopping,
            on_message=lambda msg: self.submit(("msg", msg, None)),
            on_snapshot_failed=lambda peer: self.submit(("snapshot_failed", peer)),
            snapshot_source=self.storage.snapshot_bytes)
        self.threads = [threading.Thread(target=self._raft_loop, name="raft", daemon=True),
                        *self.transport.senders.values()]
        self._publish_status()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for t in self.threads:
            t.start()

    def begin_shutdown(self) -> None:
        """Stop accepting work and wake long-lived event streams, so the server can drain fast."""
        self.stopping.set()
        self.transport.wake()
        with self.changes:
            self.changes.notify_all()

    def stop(self) -> None:
        self.begin_shutdown()
        self.events.put(("stop",))
        for t in self.threads:
            t.join(timeout=5)
        self.storage.close()

    def submit(self, event: tuple) -> None:
        self.events.put(event)

    # ------------------------------------------------------------- public operations
    @property
    def request_timeout(self) -> float:
        return max(3.0, 4 * self.config.election_timeout)

    def propose(self, command: dict):
        """Replicate a command; returns (status, body) once committed and applied here. Raises
        ClientError: 400 when the command cannot be encoded (e.g. nested too deep), 413 when it is
        over MAX_ENTRY_BYTES encoded, 503 when there is no leader or the outcome is unknown."""
        size = checked_size(command)
        waiter = Waiter()
        self.submit(("propose", command, size, waiter))
        return waiter.wait(self.request_timeout)

    def read_barrier(self) -> None:
        """Returns once this node, as a confirmed leader, has applied every write acknowledged
        before the call (Raft read-index)."""
        waiter = Waiter()
        self.submit(("read", waiter))
        waiter.wait(self.request_timeout)

    def deliver(self, msg: dict, snapshot_state: dict | None = None) -> dict:
        """A checked raft request from a peer; returns our response once it is safe to send.
        Gives up (ClientError 503) before the sender would, so no server thread is held for an
        answer nobody waits for."""
        waiter = Waiter()
        if snapshot_state is not None:
            msg["data"] = snapshot_state
        self.submit(("msg", msg, waiter))
        return waiter.wait(self.transport.receive_timeout(msg["type"]))

    # ------------------------------------------------------------- raft loop
    def _raft_loop(self) -> None:
        core = self.core
        tick = min(self.config.heartbeat_interval / 2, 0.05)
        was_leader = False
        try:
            while not self.stopping.is_set():
                batch = []
                try:
                    batch.append(self.events.get(timeout=tick))
                    while True:
                        batch.append(self.events.get_nowait())
                except queue.Empty:
                    pass
                core.tick(time.monotonic())
                for event in batch:
                    self._handle_event(event)
                # advance() can commit (a leader counting its own fsync): hand that out at once.
                while self._handle_ready():
                    pass
                if was_leader and core.role != LEADER:
                    self._fail_pending(ClientError(503, "unknown_outcome",
                                                   "leadership was lost before the write committed; "
                                                   "it may or may not be applied", retry_after=1))
                if core.role == LEADER and not was_leader:
                    print(f"ROLE leader term={core.term} node={self.id}", file=sys.stderr, flush=True)
                    log.info("became leader for term %d", core.term)
                was_leader = core.role == LEADER
                self._publish_status()
        except StorageError as exc:  # an expected failure (disk full, fsync error): one line
            log.error("storage failed: %s; exiting, the log can no longer be trusted to be durable", exc)
            print(f"error: storage failed: {exc}", file=sys.stderr, flush=True)
            os._exit(70)
        except Exception:
            log.exception("raft loop crashed; exiting so that no unsafe state is served")
            os._exit(70)

    def _handle_event(self, event: tuple) -> None:
        core, kind = self.core, event[0]
        if kind == "propose":
            _, command, size, waiter = event
            try:
                index, term = core.propose(command, size)
            except NotLeader:
                waiter.fail(no_leader())
                return
            self.pending[index] = (term, waiter)
        elif kind == "read":
            waiter = event[1]
            read_id = next(self.read_ids)
            try:
                core.read_index(read_id)
            except NotLeader:
                waiter.fail(no_leader())
                return
            self.reads[read_id] = waiter
        elif kind == "msg":
            _, msg, waiter = event
            if waiter is not None:
                self.replies[(msg["from"], msg["rid"])] = waiter
            core.step(msg)  # checked by the transport's codec
        elif kind == "snapshot_failed":
            core.snapshot_failed(event[1])
        elif kind == "compact":
            _, index, term = event
            core.compact(index, term)
            self.storage.compact(min(index, core.snap_index))

    def _handle_ready(self) -> bool:
        """Persist, send and hand out one Ready; False when there was nothing to do."""
        core = self.core
        rd = core.ready()
        if rd.empty():
            self._drop_unanswered()
            return False
        if rd.snapshot is not None:
            snap = rd.snapshot
            self.storage.save_snapshot(snap["last_index"], snap["last_term"], snap["data"], installed=True)
            self.last_snapshot_index = snap["last_index"]
            self.state.restore(snap["last_index"], snap["last_term"], snap["data"])
            self._notify_change()
        # A leader may ship entries to followers while it fsyncs them itself (Raft §10.2.1): it
        # counts its own copy only after advance(). Votes, replies and term changes wait.
        if rd.hard_state is None:
            later = [m for m in rd.messages if m["type"] not in (APPEND_REQ, SNAP_REQ)]
            for msg in rd.messages:
                if msg["type"] in (APPEND_REQ, SNAP_REQ):
                    self.transport.send(msg)
        else:
            later = rd.messages
        self.storage.append(rd.hard_state, rd.entries)  # the one fsync of this batch
        for msg in later:
            waiter = None
            if msg["type"] not in REQUESTS:
                waiter = self.replies.pop((msg["to"], msg.get("rid")), None)
            if waiter is not None:
                waiter.resolve(msg)
            else:
                self.transport.send(msg)
        if rd.committed:
            self._apply(rd.committed)
        for read_id, index in rd.reads:
            waiter = self.reads.pop(read_id, None)
            if waiter is not None:
                self.confirmed_reads.append((index, waiter))
        self._release_reads()
        for read_id in rd.failed_reads:
            waiter = self.reads.pop(read_id, None)
            if waiter is not None:
                waiter.fail(no_leader())
        core.advance(rd)
        self._drop_unanswered()
        return True

    def _release_reads(self) -> None:
        """Answer the confirmed reads whose read index this node has applied."""
        if not self.confirmed_reads:
            return
        applied, waiting = self.state.applied_index, []
        for index, waiter in self.confirmed_reads:
            if index <= applied:
                waiter.resolve()
            else:
                waiting.append((index, waiter))
        self.confirmed_reads = waiting

    def _drop_unanswered(self) -> None:
        for waiter in self.replies.values():
            waiter.fail(ClientError(400, "bad_message", "message was not accepted"))
        self.replies.clear()

    def _fail_pending(self, error: ClientError) -> None:
        waiting, self.pending = self.pending, {}
        for _, waiter in waiting.values():
            waiter.fail(error)
        for waiter in self.reads.values():
            waiter.fail(no_leader())
        self.reads.clear()

    def _publish_status(self) -> None:
        core = self.core
        now = time.monotonic()
        peers = {}
        if core.role == LEADER:
            for p, pr in core.progress.items():
                peers[p] = {"match_index": pr.match, "reachable": now - pr.last_ack < core.election_timeout,
                            "lag": core.last_index() - pr.match}
        self.status_view = {
            "node_id": self.id, "role": core.role, "is_leader": core.role == LEADER,
            "term": core.term, "leader": core.leader_id, "voted_for": core.voted_for,
            "commit_index": core.commit_index, "last_log_index": core.last_index(),
            "snapshot_index": core.snap_index, "peers": peers,
        }

    # ------------------------------------------------------------- state machine
    def _apply(self, committed: list) -> None:
        for index, term, command in committed:
            try:
                result = self.state.apply(index, term, command)
            except Exception as exc:
                log.error("entry %d could not be applied and is skipped on every replica: %r", index, exc)
                self.state.apply(index, term, NOOP)  # counts as applied, changes nothing
                result = 400, {"error": "invalid_request", "message": f"the command could not be applied: {exc!r}"}
            mine = self.pending.pop(index, None)
            if mine is not None:
                if mine[0] == term:
                    mine[1].resolve(result)
                else:
                    mine[1].fail(ClientError(503, "not_committed", "leadership changed; the "
                                             "write was not applied", retry_after=1))
        self._notify_change()
        self._maybe_snapshot()

    def _notify_change(self) -> None:
        with self.changes:
            self.change_seq += 1
            self.changes.notify_all()

    def _maybe_snapshot(self) -> None:
        if self.snapshotting or self.state.applied_index - self.last_snapshot_index < self.config.snapshot_every:
            return
        index, term, state = self.state.snapshot()
        self.snapshotting = True
        self.last_snapshot_index = index

        def write():
            try:
                self.storage.save_snapshot(index, term, state)
                self.submit(("compact", index, term))
            except StorageError as exc:  # the node goes on: the log still holds everything
                log.error("snapshot at %d failed: %s", index, exc)
            except Exception:
                log.exception("snapshot at %d failed", index)
            finally:
                self.snapshotting = False

        threading.Thread(target=write, name="snapshot", daemon=True).start()

    # ------------------------------------------------------------- status
    def status(self) -> dict:
        view = dict(self.status_view)
        view["applied_index"] = self.state.applied_index
        view["transport"] = self.transport.stats()
        return view
