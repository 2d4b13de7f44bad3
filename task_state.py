"""The replicated state machine: tasks and legacy key-values.

`apply` is deterministic: ids and timestamps are inside the command, chosen once by the
leader before proposing, so every replica computes identical state. Task dicts are never
mutated in place (an update stores a new dict), so a shallow copy is a consistent snapshot.
Readers on other threads take `lock`; only the apply thread writes.
"""
from __future__ import annotations

import itertools
import threading
from typing import Any


class TaskStateMachine:
    def __init__(self):
        self.lock = threading.Lock()
        self.tasks: dict[str, dict] = {}  # insertion order == creation order
        self.kv: dict[str, Any] = {}
        self.applied_index = 0
        self.applied_term = 0

    # ------------------------------------------------------------- writes (apply thread only)
    def apply(self, index: int, term: int, command: dict) -> tuple[int, Any]:
        """Apply one committed command; returns (http_status, body) for the client that proposed it."""
        with self.lock:
            self.applied_index, self.applied_term = index, term
            op = command.get("op")
            if op == "create":
                task = command["task"]
                self.tasks[task["id"]] = task
                return 201, task
            if op == "update":
                old = self.tasks.get(command["id"])
                if old is None:
                    return 404, {"error": "not_found", "message": f"task {command['id']} does not exist"}
                new = {**old, **command["fields"], "updated_at": command["updated_at"],
                       "version": old["version"] + 1}
                self.tasks[command["id"]] = new
                return 200, new
            if op == "delete":
                if self.tasks.pop(command["id"], None) is None:
                    return 404, {"error": "not_found", "message": f"task {command['id']} does not exist"}
                return 200, {"deleted": command["id"]}
            if op == "set":
                self.kv[command["key"]] = command["value"]
                return 200, {"key": command["key"], "value": command["value"]}
            return 200, None  # noop

    def snapshot(self) -> tuple[int, int, dict]:
        with self.lock:
            return self.applied_index, self.applied_term, {"tasks": dict(self.tasks), "kv": dict(self.kv)}

    def restore(self, index: int, term: int, state: dict | None) -> None:
        with self.lock:
            state = state or {}
            self.tasks = dict(state.get("tasks", {}))
            self.kv = dict(state.get("kv", {}))
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
