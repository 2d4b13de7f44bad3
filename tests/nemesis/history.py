"""Operation history: one JSON object per line.

Every client operation is recorded once, when it completes (or is given up on), as::

    {"id": 17, "process": 3, "f": "set", "key": "k2", "value": "v:3:41",
     "node": "http://127.0.0.1:5001", "consistency": null,
     "invoke": 1.2345, "complete": 1.2891, "outcome": "ok",
     "status": 200, "result": null, "error": null}

Fields
  id           unique, increasing in invoke order per process (not globally ordered by time)
  process      client number (-1 for the campaign's own final reads)
  f            set | get | get_all | create | update | delete | read_task | list
  key          job key (set/get), task id (update/delete/read_task) or null
  value        the argument written: set -> the value; create -> {"title", "description"};
               update -> {"description"}
  consistency  "linearizable" | "stale" for reads, null for writes
  invoke       seconds since the start of the run (time.monotonic based, one process)
  complete     seconds since the start of the run when the answer (or the give-up) came
  outcome      "ok"      the server answered with a definite result (for reads, a 404 is an
                         ok read that found nothing)
               "fail"    definitely had no effect (connection refused, 4xx, 503 no_leader)
               "unknown" may or may not have taken effect (timeout, reset after the request
                         was sent, 503 unknown_outcome, other 5xx)
  status       HTTP status or null
  result       normalised answer: get -> {"found": bool, "value": v}; get_all -> {key: value};
               create/update/read_task -> task dict (read_task 404 -> null);
               list -> {"tasks": [...], "total": N}; delete -> {"deleted": id}
  error        short error text for fail/unknown
  idem_key     the Idempotency-Key every attempt of a write carried (null for reads)
  if_match     the version a conditional update/delete named in If-Match, or null
  attempts     requests sent for this operation: a write whose answer was not definite is
               retried with the same key (invoke is the first attempt's, complete the last's)
  answers      [status, normalised body] of every definite (non-5xx) answer of the attempts

The checkers only read these records, so a history file from any run can be re-checked
offline: ``python -m tests.nemesis.campaign --check-history path/to/history.jsonl``.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"
OUTCOMES = (OK, FAIL, UNKNOWN)

WRITE_FS = ("set", "create", "update", "delete")
READ_FS = ("get", "get_all", "read_task", "list")


@dataclass
class Op:
    id: int
    process: int
    f: str
    key: Any = None
    value: Any = None
    node: Optional[str] = None
    consistency: Optional[str] = None
    invoke: float = 0.0
    complete: Optional[float] = None
    outcome: str = UNKNOWN
    status: Optional[int] = None
    result: Any = None
    error: Optional[str] = None
    idem_key: Optional[str] = None
    if_match: Optional[int] = None
    attempts: int = 1
    answers: Optional[list] = None

    @property
    def is_write(self) -> bool:
        return self.f in WRITE_FS

    @property
    def stale(self) -> bool:
        return self.consistency == "stale"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> "Op":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        op = cls(**known)
        if op.outcome not in OUTCOMES:
            raise ValueError(f"bad outcome {op.outcome!r} in {d}")
        return op

    def short(self) -> str:
        """One line, for failure reports."""
        comp = "inf" if self.complete is None else f"{self.complete:.3f}"
        parts = [f"#{self.id} p{self.process} {self.f}"]
        if self.consistency:
            parts.append(self.consistency)
        if self.key is not None:
            parts.append(f"key={self.key}")
        if self.value is not None:
            parts.append(f"arg={json.dumps(self.value, sort_keys=True)}")
        parts.append(f"[{self.invoke:.3f},{comp}]")
        parts.append(self.outcome)
        if self.status is not None:
            parts.append(f"http={self.status}")
        if self.result is not None:
            r = json.dumps(self.result, sort_keys=True)
            parts.append("-> " + (r if len(r) <= 160 else r[:157] + "..."))
        if self.error:
            parts.append(f"err={self.error}")
        if self.if_match is not None:
            parts.append(f"if-match={self.if_match}")
        if self.attempts > 1:
            parts.append(f"attempts={self.attempts}")
        if self.node:
            parts.append(f"@{self.node}")
        return " ".join(parts)


class History:
    """Thread-safe recorder. Appends each op to memory and (optionally) to a JSONL file,
    flushed per line so a crashed test still leaves a usable history."""

    def __init__(self, path=None, t0: Optional[float] = None):
        self.t0 = time.monotonic() if t0 is None else t0
        self.ops: list[Op] = []
        self._lock = threading.Lock()
        self._next_id = 0
        self._fh = open(path, "w", encoding="utf-8") if path else None
        self.path = path

    def now(self) -> float:
        return time.monotonic() - self.t0

    def new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def record(self, op: Op) -> Op:
        line = op.to_json()
        with self._lock:
            self.ops.append(op)
            if self._fh:
                self._fh.write(line + "\n")
                self._fh.flush()
        return op

    def close(self):
        with self._lock:
            if self._fh:
                self._fh.close()
                self._fh = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_history(path) -> list[Op]:
    ops = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                ops.append(Op.from_dict(json.loads(line)))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}:{n}: {e}") from None
    return ops


def dump_history(ops: Iterable[Op], path) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for op in ops:
            fh.write(op.to_json() + "\n")


def summarize(ops: Iterable[Op]) -> dict:
    """{f: {outcome: count}} plus totals, for reports."""
    out: dict = {}
    total = {OK: 0, FAIL: 0, UNKNOWN: 0}
    for op in ops:
        name = op.f + ("/stale" if op.stale else "")
        d = out.setdefault(name, {OK: 0, FAIL: 0, UNKNOWN: 0})
        d[op.outcome] += 1
        total[op.outcome] += 1
    out["total"] = total
    return out


def format_summary(summary: dict) -> str:
    rows = []
    for name in sorted(k for k in summary if k != "total"):
        d = summary[name]
        rows.append(f"  {name:16s} ok={d[OK]:5d} fail={d[FAIL]:5d} unknown={d[UNKNOWN]:5d}")
    t = summary.get("total", {OK: 0, FAIL: 0, UNKNOWN: 0})
    rows.append(f"  {'TOTAL':16s} ok={t[OK]:5d} fail={t[FAIL]:5d} unknown={t[UNKNOWN]:5d}")
    return "\n".join(rows)
