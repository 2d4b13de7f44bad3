"""The replicated state machine: tasks, legacy key-values, the idempotency-key table and the
change feed.

`apply` is deterministic: ids and timestamps are inside the command, chosen once by the
leader before proposing, so every replica computes identical state. Task dicts are never
mutated in place (an update stores a new dict), so a shallow copy is a consistent snapshot.
Readers on other threads take `lock` (but stored_answer: one dict read); only the apply thread writes.

Optional command fields (issue 12):
  "idem": {"key", "fp", "at"}  an Idempotency-Key, the request's fingerprint and the leader's
        clock (epoch seconds). The first entry with a key applies and stores its answer; a later
        one with the same key and fingerprint changes nothing and returns that answer; another
        fingerprint gets 422 idempotency_key_reused. Keys are forgotten deterministically: the
        table's clock is the highest "at" applied so far, a key expires IDEM_TTL seconds after
        the clock when it was stored, and only the IDEM_MAX_KEYS newest keys (holding at most
        IDEM_MAX_BYTES of stored answers) are kept. Every replica forgets the same keys at the
        same entry; no replica reads its own wall clock.
  "if_match": "*" or [versions]  (update, delete) checked here, at apply time, so of racing
        conditional writers at most one wins; a mismatch is 412 precondition_failed with the
        current task (or null) under "current".
Every applied change (create, update, delete, set) is also recorded with its log index in a
bounded feed for /events; the feed is not in snapshots: after a restore it starts at the
snapshot's index and fills again as the log is replayed.
"""
from __future__ import annotations

import collections
import itertools
import threading
from typing import Any

import orjson

IDEM_TTL = 24 * 3600.0
IDEM_MAX_KEYS = 100_000
IDEM_MAX_BYTES = 64 * 1024 * 1024  # of stored answers, encoded
FEED_SIZE = 10_000


class Replayed(tuple):
    """An (http_status, body) answer taken from the key table, not produced by this entry: it
    unpacks like any answer, and the API layer can tell it apart to say so in a header."""


def precondition_failed(task_id: str, current: dict | None) -> tuple[int, dict]:
    message = (f"task {task_id} does not exist" if current is None else
               f"task {task_id} is at version {current['version']}, which If-Match does not name")
    return 412, {"error": "precondition_failed", "message": message, "current": current}


def version_matches(expected, task: dict | None) -> bool:
    if task is None:
        return False
    return expected == "*" or task["version"] in expected


class TaskStateMachine:
    def __init__(self):
        self.lock = threading.Lock()
        self.tasks: dict[str, dict] = {}  # insertion order == creation order
        self.kv: dict[str, Any] = {}
        self.applied_index = 0
        self.applied_term = 0
        # key -> [fingerprint, status, body, clock when stored, encoded size of body]; oldest first,
        # and since the clock never goes back, in order of expiry too.
        self.idem_keys: dict[str, list] = {}
        self.idem_clock = 0.0
        self.idem_bytes = 0
        self.feed: collections.deque = collections.deque()  # (index, change), oldest first
        self.feed_floor = 0  # every change after this index is in the feed

    # ------------------------------------------------------------- writes (apply thread only)
    def apply(self, index: int, term: int, command: dict) -> tuple[int, Any]:
        """Apply one committed command; returns (http_status, body) for the client that proposed it."""
        with self.lock:
            self.applied_index, self.applied_term = index, term
            idem = command.get("idem")
            if idem is None:
                return self._apply(index, command)
            self._forget_keys(float(idem["at"]))
            stored = self.idem_keys.get(idem["key"])
            if stored is not None:
                if stored[0] != idem["fp"]:
                    return key_reused(idem["key"])
                return Replayed((stored[1], stored[2]))
            status, body = self._apply(index, command)
            size = len(orjson.dumps(body))
            self.idem_keys[idem["key"]] = [idem["fp"], status, body, self.idem_clock, size]
            self.idem_bytes += size
            while len(self.idem_keys) > IDEM_MAX_KEYS or self.idem_bytes > IDEM_MAX_BYTES:
                self._drop_oldest_key()
            return status, body

    def _apply(self, index: int, command: dict) -> tuple[int, Any]:
        op = command.get("op")
        if op == "create":
            task = command["task"]
            self.tasks[task["id"]] = task
            self._record(index, {"op": "create", "id": task["id"], "task": task})
            return 201, task
        if op == "update":
            old, refusal = self._current(command)
            if refusal is not None:
                return refusal
            new = {**old, **command["fields"], "updated_at": command["updated_at"],
                   "version": old["version"] + 1}
            self.tasks[command["id"]] = new
            self._record(index, {"op": "update", "id": new["id"], "task": new})
            return 200, new
        if op == "delete":
            _, refusal = self._current(command)
            if refusal is not None:
                return refusal
            del self.tasks[command["id"]]
            self._record(index, {"op": "delete", "id": command["id"]})
            return 200, {"deleted": command["id"]}
        if op == "set":
            self.kv[command["key"]] = command["value"]
            self._record(index, {"op": "set", "key": command["key"]})
            return 200, {"key": command["key"], "value": command["value"]}
        return 200, None  # noop

    def _current(self, command: dict) -> tuple[dict | None, tuple[int, dict] | None]:
        """The task an update or delete names, or the answer refusing it (If-Match first, so a
        conditional write on a deleted task is 412 with current null, not 404)."""
        task = self.tasks.get(command["id"])
        if "if_match" in command and not version_matches(command["if_match"], task):
            return task, precondition_failed(command["id"], task)
        if task is None:
            return None, (404, {"error": "not_found", "message": f"task {command['id']} does not exist"})
        return task, None

    def _record(self, index: int, change: dict) -> None:
        change["index"] = index
        self.feed.append(change)
        if len(self.feed) > FEED_SIZE:
            self.feed_floor = self.feed.popleft()["index"]

    def _forget_keys(self, at: float) -> None:
        self.idem_clock = max(self.idem_clock, at)
        horizon = self.idem_clock - IDEM_TTL
        while self.idem_keys and next(iter(self.idem_keys.values()))[3] <= horizon:
            self._drop_oldest_key()

    def _drop_oldest_key(self) -> None:
        key = next(iter(self.idem_keys))
        self.idem_bytes -= self.idem_keys.pop(key)[4]

    def snapshot(self) -> tuple[int, int, dict]:
        with self.lock:
            return self.applied_index, self.applied_term, {
                "tasks": dict(self.tasks), "kv": dict(self.kv),
                "idempotency": {"clock": self.idem_clock, "keys": dict(self.idem_keys)}}

    def restore(self, index: int, term: int, state: dict | None) -> None:
        with self.lock:
            state = state or {}
            self.tasks = dict(state.get("tasks", {}))
            self.kv = dict(state.get("kv", {}))
            idem = state.get("idempotency", {})  # absent in snapshots of earlier versions
            self.idem_clock = float(idem.get("clock", 0.0))
            self.idem_keys = dict(idem.get("keys", {}))
            self.idem_bytes = sum(entry[4] for entry in self.idem_keys.values())
            self.feed.clear()
            self.feed_floor = index
            self.applied_index, self.applied_term = index, term

    # ------------------------------------------------------------- reads (any thread)
    def list_tasks(self, limit: int, offset: int) -> tuple[list[dict], int, int]:
        """Up to `limit` tasks from `offset`, newest first; the number of tasks; the applied
        index they reflect."""
        with self.lock:
            newest_first = reversed(self.tasks.values())
            page = list(itertools.islice(newest_first, offset, offset + limit))
            return page, len(self.tasks), self.applied_index

    def get_task(self, task_id: str) -> dict | None:
        with self.lock:
            return self.tasks.get(task_id)

    def list_kv(self, limit: int, offset: int) -> tuple[list[tuple[str, Any]], int]:
        """Up to `limit` (key, value) pairs from `offset`, in the order keys were first set; the
        number of keys."""
        with self.lock:
            return list(itertools.islice(self.kv.items(), offset, offset + limit)), len(self.kv)

    def get_kv(self, key: str, default=None):
        with self.lock:
            return self.kv.get(key, default)

    def stored_answer(self, key: str, fingerprint: str) -> tuple[int, Any] | None:
        """The answer already applied for an Idempotency-Key (a Replayed), 422 if the key was
        used for another request, None if the key is unknown here. Without the lock: one dict
        read is atomic, a stored entry is never changed, and the apply thread decides anyway
        (this only spares the log a repeat); waiting for the lock behind every apply cost
        writes with a key a context switch now and then."""
        stored = self.idem_keys.get(key)
        if stored is None:
            return None
        if stored[0] != fingerprint:
            return key_reused(key)
        return Replayed((stored[1], stored[2]))

    def changes_after(self, index: int, limit: int) -> tuple[list[dict] | None, int]:
        """Up to `limit` changes with a log index above `index`, oldest first, and the applied
        index; None instead of the changes when some after `index` are no longer in the feed."""
        with self.lock:
            if index < self.feed_floor:
                return None, self.applied_index
            if not self.feed or self.feed[-1]["index"] <= index:
                return [], self.applied_index
            # The feed is ordered by index: skip from the newer end when the client is close.
            newer = list(itertools.takewhile(lambda c: c["index"] > index, reversed(self.feed)))
            newer.reverse()
            return newer[:limit], self.applied_index


def key_reused(key: str) -> tuple[int, dict]:
    return 422, {"error": "idempotency_key_reused",
                 "message": f"Idempotency-Key {key!r} was already used for a different request"}
