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
              the next request. Senders follow the configuration (Ready.members).

Membership: the configuration is data in the raft log (raft_core.py). `--peers` only describes
the first configuration of a brand-new cluster, kept with the cluster id in cluster.json; after
that the log and the snapshots say who the members are. Changes are proposed one at a time by
the leader's raft loop (add a learner, promote it once caught up, remove, change a URL).

A single bad command never stops the loop: a command is checked (depth, encoded size) in the
proposing thread and refused there unless the WAL and AppendEntries can carry it, and a committed command whose
apply raises is an error for its client only (apply is deterministic, so every replica fails it
alike and the replicas stay identical).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import queue
import random
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

import auth
from metrics import NodeMetrics
from raft_core import (APPEND_REQ, LEADER, LEARNER, NOOP, REQUESTS, SNAP_REQ, VOTER, ConfigRefused,
                       NotLeader, RaftCore, TransferInProgress)
from storage import Storage, StorageError
from task_state import TaskStateMachine
from transport import MAX_ENTRY_BYTES, REPLY_TYPE, LimitedLog, RequestRefused, Transport

log = logging.getLogger("pickledb_cluster.node")


NODE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
PROMOTE_GAP = 1000  # a learner this close to the leader's last index is caught up enough to vote


def valid_peer_url(url: str, scheme: str = "http") -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return False
    # A node's URL is exactly SCHEME://HOST:PORT (https with --tls-cert): anything after it would never match.
    return (parts.scheme == scheme and bool(parts.hostname) and port is not None and 0 < port
            and not (parts.path or parts.query or parts.fragment or parts.username or parts.password)
            and "#" not in url and "?" not in url)  # an empty query or fragment too


def default_id(url: str) -> str:
    """A node's id when none is given: "<host>:<port>" of its URL."""
    return urlsplit(url).netloc


def cluster_id_of(members: list[dict]) -> str:
    """The id of a cluster bootstrapped with `members`: every bootstrapping node computes the same
    one without talking (etcd's way)."""
    lines = sorted(f"{m['id']}={m['url']}" for m in members)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass
class NodeConfig:
    host: str = "127.0.0.1"
    port: int = 4000
    peers: list[str] = field(default_factory=list)  # URLs of the other initial members (bootstrap only)
    data_dir: str = "data/node_4000"
    heartbeat_interval: float = 2.0
    election_timeout: float = 5.0
    first_election_timeout: float | None = None
    cluster_secret: str | None = None
    snapshot_every: int = 10000
    node_id: str | None = None  # default: "<host>:<port>" of the advertised URL
    advertise_url: str | None = None  # default: http(s)://<host>:<port>
    peer_ids: list[str] | None = None  # ids of `peers`, in order (default: "<host>:<port>" of each)
    join: list[str] = field(default_factory=list)  # members to ask to add us (an empty node only)
    join_as_learner: bool = False
    tls: Any = None  # a tls.NodeTLS: the node serves HTTPS and calls its peers over (mutual) TLS

    @property
    def url(self) -> str:
        return self.advertise_url or f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def id(self) -> str:
        return self.node_id or default_id(self.url)

    def bootstrap_members(self) -> list[dict]:
        ids = self.peer_ids or [default_id(u) for u in self.peers]
        return [{"id": self.id, "url": self.url, "role": VOTER}] + [
            {"id": i, "url": u, "role": VOTER} for i, u in zip(ids, self.peers)]


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


def describe_members(members: list[dict]) -> str:
    return ", ".join(f"{m['id']}={m['url']} ({m['role']})" for m in members)


# ConfigRefused codes the client sees as they are; the others are waited out (they pass within
# a round trip or an election timeout).
REFUSALS = {"change_in_progress": 409, "last_voter": 409, "unknown_member": 404, "not_voter": 409,
            "no_target": 409, "transfer_in_progress": 409, "not_single_change": 409}
POLL = 0.02  # seconds between two looks at a membership change's progress


class Node:
    def __init__(self, config: NodeConfig):
        self.config = config
        self.metrics = NodeMetrics(self)
        self.id = config.id
        self.url = config.url
        self.stopping = threading.Event()
        # Test networks route a member's traffic through a proxy: its URL -> the proxy's URL.
        self.url_routes = json.loads(os.environ.get("PICKLEDB_PEER_ROUTES") or "{}")

        self.storage = Storage(config.data_dir, fs=self.metrics.wal_fs())
        try:
            state, entries = self.storage.load()
            members = self._identity(state is None and not entries and self.storage.hard_state[0] == 0)
        except BaseException:
            self.storage.close()
            raise
        meta = self.storage.snapshot_meta
        self.state = TaskStateMachine()
        self.state.restore(meta["index"], meta["term"], state)
        term, vote = self.storage.hard_state
        self.core = RaftCore(self.id, members, election_timeout=config.election_timeout,
                             heartbeat_interval=config.heartbeat_interval, now=time.monotonic(),
                             rng=random.Random(), term=term, voted_for=vote,
                             snap_index=meta["index"], snap_term=meta["term"], entries=entries,
                             first_election_timeout=config.first_election_timeout,
                             entry_size=encoded_size)
        log.info("node %s (%s) of cluster %s loaded snapshot at %d and %d log entries (term %d); "
                 "members: %s", self.id, self.url, self.cluster_id, meta["index"], len(entries), term,
                 describe_members(self.core.members) or "none yet")
        self.peers_mismatch: str | None = None  # how --peers differs from the configuration in the log
        self._warn_if_peers_differ()
        self.routes: dict[str, str] = {}
        self.leader_commit = self.core.commit_index  # the leader's commit index as last heard
        self.cluster_mismatch: str | None = None  # the last foreign cluster id seen
        self.mismatches = 0
        self.mismatch_log = LimitedLog(log)
        self.cluster_lock = threading.Lock()
        self.held: list[tuple] = []  # proposals waiting for a leadership transfer to end

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
            self.id, {}, secret=config.cluster_secret, tls=config.tls, election_timeout=config.election_timeout,
            heartbeat_interval=config.heartbeat_interval, stopping=self.stopping,
            on_message=lambda msg: self.submit(("msg", msg, None)),
            on_snapshot_failed=lambda peer: self.submit(("snapshot_failed", peer)),
            snapshot_source=self.storage.snapshot_bytes, cluster_id=self.cluster_id)
        self._follow_members(self.core.members)
        self.threads = [threading.Thread(target=self._raft_loop, name="raft", daemon=True)]
        self._publish_status()

    # ------------------------------------------------------------- identity and configuration
    def _identity(self, empty: bool) -> list[dict]:
        """Load or create the cluster identity; returns the configuration at the snapshot.
        Bootstrap happens once, for an empty data dir: afterwards --peers is not consulted."""
        config, storage = self.config, self.storage
        info = storage.load_cluster()
        if info is None and config.join and empty:
            self.cluster_id = None  # adopted from the leader's first message
            return []
        if info is None:
            # A brand-new cluster, or a data dir from before cluster ids: --peers is the configuration.
            members = config.bootstrap_members()
            if not empty:
                log.warning("data dir %s has a log but no %s (written by an earlier version): taking "
                            "--peers as its configuration", config.data_dir, "cluster.json")
            info = {"cluster_id": cluster_id_of(members), "members": members}
            storage.save_cluster(info)
            log.info("bootstrapped cluster %s with %s", info["cluster_id"], describe_members(members))
        elif config.join:
            log.info("--join ignored: this node is already a member of cluster %s", info["cluster_id"])
        self.cluster_id = info["cluster_id"]
        return storage.snapshot_meta.get("members") or info["members"]

    def _warn_if_peers_differ(self) -> None:
        if self.config.join or not self.core.members:
            return
        given = {(m["id"], m["url"]) for m in self.config.bootstrap_members()}
        actual = {(m["id"], m["url"]) for m in self.core.members}
        if given != actual:
            self.peers_mismatch = ("only in --peers: " + (", ".join(f"{i}={u}" for i, u in sorted(given - actual)) or "nothing")
                                   + "; only in the configuration: "
                                   + (", ".join(f"{i}={u}" for i, u in sorted(actual - given)) or "nothing"))
            log.warning("--peers differs from the cluster's configuration, which is kept (it lives in "
                        "the log; change it with the /cluster/members API): %s", self.peers_mismatch)

    def _follow_members(self, members: list[dict]) -> None:
        """Route messages to the members of the configuration in effect."""
        self.routes = {m["id"]: self.url_routes.get(m["url"], m["url"]) for m in members if m["id"] != self.id}
        self.transport.update_routes(self.routes)

    def url_of(self, node_id: str | None) -> str | None:
        """The advertised URL of a member (None when unknown)."""
        if node_id == self.id:
            return self.url
        return next((m["url"] for m in self.core.members if m["id"] == node_id), None)

    def check_cluster(self, cluster_id: str | None, mtype: str) -> None:
        """Refuse a node-to-node request from another cluster (409 cluster_mismatch). A node that
        joins adopts the cluster id of the leader's first message, durably, before it answers."""
        if cluster_id is not None and cluster_id == self.cluster_id:
            return
        if self.cluster_id is None and cluster_id and mtype in (APPEND_REQ, SNAP_REQ):
            with self.cluster_lock:
                if self.cluster_id is None:
                    self.storage.save_cluster({"cluster_id": cluster_id, "members": []})
                    self.transport.set_cluster_id(cluster_id)
                    self.cluster_id = cluster_id
                    log.info("joined cluster %s", cluster_id)
            if cluster_id == self.cluster_id:
                return
        self.cluster_mismatch = cluster_id
        self.mismatches += 1
        self.mismatch_log.warning("mismatch", "refused a %s from cluster %s: this node belongs to cluster %s "
                                  "(a node of another cluster is configured as a peer?)",
                                  mtype, cluster_id, self.cluster_id)
        raise RequestRefused(409, "cluster_mismatch", f"this node belongs to cluster {self.cluster_id}, "
                             f"not {cluster_id or '(no cluster id given)'}")

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.transport.start()
        if self.config.join and self.cluster_id is None:
            self.threads.append(threading.Thread(target=self._join, name="join", daemon=True))
        for t in self.threads:
            t.start()

    def _join(self) -> None:
        """Ask the members listed in --join to add this node (as a voter once caught up), trying
        them in turn with backoff, for at most join_timeout. Idempotent on their side."""
        import requests  # only a joining node needs an HTTP client here
        body = orjson.dumps({"url": self.url, "id": self.id, "learner": self.config.join_as_learner})
        deadline = time.monotonic() + 2 * self.join_timeout
        pause, attempt = 0.2, 0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            target = self.config.join[attempt % len(self.config.join)]
            attempt += 1
            try:
                headers = {"Content-Type": "application/json"}
                if self.config.cluster_secret:  # a cluster with client tokens lets a node that proves it holds the secret join
                    headers.update(auth.node_identity_headers(self.config.cluster_secret, self.id, "POST", "/cluster/members",
                                                              urlsplit(target).netloc, body))
                tls = self.config.tls
                resp = requests.post(target + "/cluster/members", data=body, headers=headers, timeout=self.join_timeout + 5,
                                     **({"verify": tls.requests_verify, "cert": tls.requests_cert} if tls else {}))
                if resp.status_code in (200, 201):
                    log.info("joined the cluster through %s as %s", target, self.id)
                    return
                problem = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if resp.status_code in (400, 401, 403, 404, 409) and \
                        resp.json().get("error") not in ("change_in_progress", "transfer_in_progress"):
                    log.error("cannot join through %s: %s", target, problem)
                    return
            except (requests.RequestException, ValueError) as exc:
                problem = str(exc)
            log.warning("join through %s failed (%s); retrying", target, problem)
            self.stopping.wait(pause)
            pause = min(2.0, pause * 2)
        if not self.stopping.is_set():
            log.error("could not join the cluster through %s", ", ".join(self.config.join))

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
        self.transport.join(timeout=5)
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

    def call(self, fn, timeout: float | None = None):
        """Run `fn()` in the raft loop (the core's owner) and return its result; ClientErrors it
        raises reach the caller."""
        waiter = Waiter()
        self.submit(("call", fn, waiter))
        return waiter.wait(timeout or self.request_timeout)

    def _leader_core(self) -> RaftCore:
        if self.core.role != LEADER:
            raise no_leader()
        return self.core

    def _propose_config(self, members: list[dict], wait_codes=()) -> Waiter | None:
        """Raft loop: propose `members`; returns the waiter of its commit, or None when refused with
        one of `wait_codes` (try again soon). Other refusals become ClientErrors."""
        core = self._leader_core()
        try:
            index, term = core.propose_config(members)
        except ConfigRefused as exc:
            if exc.code in wait_codes or exc.code == "leader_not_ready":
                return None
            raise ClientError(REFUSALS.get(exc.code, 409), exc.code, exc.message)
        except TransferInProgress as exc:
            raise ClientError(409, "transfer_in_progress", str(exc))
        waiter = Waiter()
        self.pending[index] = (term, waiter)
        log.info("proposed configuration at %d: %s", index, describe_members(members))
        return waiter

    def _settle(self, step, deadline: float, what: str):
        """Repeat `step()` in the raft loop until it returns ("done", result); ("wait", None) means
        look again shortly, ("proposed", waiter) means wait for that change to commit first."""
        while True:
            kind, value = self.call(step)
            if kind == "done":
                return value
            if kind == "proposed":
                value.wait(max(self.request_timeout, deadline - time.monotonic()))
                continue
            if time.monotonic() >= deadline or self.stopping.is_set():
                raise ClientError(503, "not_committed", f"{what} did not complete in time; retry", retry_after=1)
            time.sleep(POLL)

    def _caught_up(self, node_id: str) -> bool:
        core = self.core
        pr = core.progress.get(node_id)
        # It must hold the entry that added it (so it answered for real, under its id) and be
        # close behind the leader, so that promoting it does not stall commits while it catches up.
        return (pr is not None and pr.match >= core.config_index and pr.match >= core.last_index() - PROMOTE_GAP
                and core.now - pr.last_ack < core.election_timeout)

    def add_member(self, node_id: str, url: str, learner: bool = False) -> tuple[int, dict]:
        """Add a node (or change a member's URL): as a learner, then, unless `learner`, promote it to
        voter once it has caught up. Returns (201 created | 200 already so, member) once committed.
        Idempotent: asking again for what is already so answers 200."""
        created = False
        first = True

        def step():
            nonlocal created, first
            core = self._leader_core()
            clash = next((m for m in core.members if m["url"] == url and m["id"] != node_id), None)
            if clash is not None:
                raise ClientError(409, "url_in_use", f"{url} is the URL of member {clash['id']}")
            member = next((m for m in core.members if m["id"] == node_id), None)
            others = [m for m in core.members if m["id"] != node_id]
            waits = ("change_in_progress", "transfer_in_progress") if not first else ()
            first = False
            if member is None or member["url"] != url:
                role = LEARNER if member is None else member["role"]
                created = created or member is None
                waiter = self._propose_config(others + [{"id": node_id, "url": url, "role": role}], waits)
                return ("proposed", waiter) if waiter else ("wait", None)
            if member["role"] == LEARNER and not learner:
                if not self._caught_up(node_id):
                    return "wait", None
                waiter = self._propose_config(others + [dict(member, role=VOTER)],
                                              ("change_in_progress", "transfer_in_progress"))
                return ("proposed", waiter) if waiter else ("wait", None)
            if core.config_index > core.commit_index:
                return "wait", None
            return "done", dict(member)
        member = self._settle(step, time.monotonic() + self.join_timeout, f"adding {node_id}")
        return (201 if created else 200), member

    def remove_member(self, node_id: str) -> dict:
        """Remove a member (the leader too: it hands over and steps down once the change commits)."""
        def step():
            core = self._leader_core()
            if not any(m["id"] == node_id for m in core.members):
                raise ClientError(404, "unknown_member", f"{node_id} is not a member")
            waiter = self._propose_config([m for m in core.members if m["id"] != node_id])
            return ("proposed", waiter) if waiter else ("wait", None)
        removed = False

        def once():
            nonlocal removed
            if removed:
                return "done", None
            kind, value = step()
            removed = kind == "proposed"
            return kind, value
        self._settle(once, time.monotonic() + self.request_timeout, f"removing {node_id}")
        return {"removed": node_id}

    def transfer_leader(self, target: str | None, wait: float | None = None) -> dict:
        """Hand leadership to `target` (None: the most up-to-date voter); returns once it leads,
        or raises 503 transfer_failed after `wait` seconds (default: two election timeouts)."""
        def start():
            core = self._leader_core()
            try:
                return core.transfer_leadership(target)
            except ConfigRefused as exc:
                raise ClientError(REFUSALS.get(exc.code, 409), exc.code, exc.message)
        chosen = self.call(start)
        deadline = time.monotonic() + (wait if wait is not None else 2 * self.config.election_timeout + 1)
        while chosen != self.id:
            leader = self.core.leader_id
            if leader is not None and leader != self.id:
                return {"leader": leader, "url": self.url_of(leader)}
            if time.monotonic() >= deadline:
                raise ClientError(503, "transfer_failed", f"{chosen} did not take over in time; "
                                  "retry", retry_after=1)
            time.sleep(POLL)
        return {"leader": self.id, "url": self.url}

    def hand_over(self) -> None:
        """On shutdown: a leader hands leadership to the most up-to-date voter and waits (at most
        about an election timeout) for it to take over, so the cluster barely notices. Only a
        voter that answered within an election timeout can take over: with none (the last node
        of a cluster being stopped), the node just stops."""
        def reachable_successor():
            core, now = self.core, time.monotonic()
            if core.role != LEADER:
                return None
            alive = [(core.progress[v].match, v) for v in core.voters
                     if v != self.id and v in core.progress and now - core.progress[v].last_ack < core.election_timeout]
            return max(alive)[1] if alive else None
        target = self.call(reachable_successor)
        if target is None:
            return
        try:
            self.transfer_leader(target, wait=self.config.election_timeout)
        except ClientError as exc:
            if exc.code != "no_leader":  # not the leader: nothing to hand over
                log.warning("no leadership transfer before stopping: %s", exc.message)
        else:
            log.info("handed leadership over to %s before stopping", self.core.leader_id)

    def members_view(self) -> dict:
        def view():
            core, now = self.core, time.monotonic()
            out = []
            for m in core.members:
                entry = dict(m, match_index=None, reachable=None, self=m["id"] == self.id)
                if m["id"] == self.id:
                    entry.update(match_index=core.last_index(), reachable=True)
                elif core.role == LEADER and m["id"] in core.progress:
                    pr = core.progress[m["id"]]
                    entry.update(match_index=pr.match, reachable=now - pr.last_ack < core.election_timeout,
                                 lag=core.last_index() - pr.match)
                out.append(entry)
            return {"members": out, "leader": core.leader_id, "leader_url": self.url_of(core.leader_id),
                    "cluster_id": self.cluster_id, "config_index": core.config_index,
                    "config_committed": core.config_index <= core.commit_index}
        return self.call(view)

    @property
    def join_timeout(self) -> float:
        """How long adding a voter may take: catching up a large state included."""
        return max(60.0, 10 * self.config.election_timeout)

    def deliver(self, msg: dict, snapshot_state: dict | None = None) -> dict:
        """A checked raft request from a peer; returns our response once it is safe to send.
        Gives up (ClientError 503) before the sender would, so no server thread is held for an
        answer nobody waits for."""
        waiter = Waiter()
        if snapshot_state is not None:
            msg["data"] = snapshot_state
        if msg["type"] not in REPLY_TYPE:  # TimeoutNow: no reply
            self.submit(("msg", msg, None))
            return {}
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
                if self.held and core.transferring is None:
                    held, self.held = self.held, []
                    batch[:0] = held
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
            except TransferInProgress:  # proposed once the transfer ends (at most an election timeout)
                self.held.append(event)
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
            if msg["type"] == APPEND_REQ and msg["term"] == core.term:
                self.leader_commit = msg["commit"]
        elif kind == "call":
            _, fn, waiter = event
            try:
                waiter.resolve(fn())
            except ClientError as exc:
                waiter.fail(exc)
            except ValueError as exc:  # a member list the core refuses as malformed
                waiter.fail(ClientError(400, "invalid_request", str(exc)))
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
        if rd.bootstrap_members is not None:  # the leader's configuration at index 0: durable before we answer
            self.storage.save_cluster({"cluster_id": self.cluster_id, "members": rd.bootstrap_members})
        if rd.members is not None:  # before sending: a new member gets its messages
            self._follow_members(rd.members)
            log.info("configuration in effect: %s", describe_members(rd.members))
        if rd.snapshot is not None:
            snap = rd.snapshot
            self.storage.save_snapshot(snap["last_index"], snap["last_term"], snap["data"], installed=True,
                                       members=snap["members"])
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
        self.metrics.appended(rd.entries)
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
        voters = core.voters
        self.metrics.saw_leader(core.leader_id)
        self.status_view = {
            "node_id": self.id, "url": self.url, "cluster_id": self.cluster_id,
            "cluster_mismatch": self.cluster_mismatch, "peers_mismatch": self.peers_mismatch, "role": core.role, "is_leader": core.role == LEADER,
            "voter": self.id in voters, "term": core.term, "leader": core.leader_id,
            "leader_url": self.url_of(core.leader_id), "voted_for": core.voted_for,
            "commit_index": core.commit_index,
            "leader_commit": core.commit_index if core.role == LEADER else self.leader_commit,
            "last_log_index": core.last_index(), "snapshot_index": core.snap_index, "peers": peers,
            "members": [dict(m) for m in core.members], "config_index": core.config_index,
            "transferring": core.transferring,
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
        members = self.core.config_at(index)
        self.snapshotting = True
        self.last_snapshot_index = index

        def write():
            try:
                with self.metrics.snapshot_seconds.time():
                    self.storage.save_snapshot(index, term, state, members=members)
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
