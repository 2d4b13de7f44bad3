"""Per-key linearizability checking (Wing & Gong search with Lowe's memoisation, as in
Porcupine), for register-like objects.

Model. Each key is a register whose state is ``None`` (absent) or a value. Operations:

  kind  meaning                                 determinate (ok)              indeterminate
  ----  --------------------------------------  ----------------------------  -----------------
  'w'   unconditional write (POST /set)         state := v                    state := v
  'c'   create (POST /tasks, one per title)     requires None; state := v     state := v
  'u'   update (PUT /tasks/<id>)                requires not None; := v       if not None: := v
  'd'   delete (DELETE /tasks/<id>)             requires not None; := None    state := None
  'r'   read (GET, or a 404 answer to u/d)      requires state == v           (not recorded)

An indeterminate ("unknown") operation may have taken effect at any single instant after
its invocation, or never: it is given an infinite completion time, so the search may place
it anywhere after its invoke, including after every other operation (== never). Such
operations are never refused by the model, so when only indeterminate operations are left
the history is linearizable. Indeterminate writes whose value no read ever observed are
dropped up front (safe: see ``_prune``), which keeps the search small.

Failed operations (definitely no effect) and stale reads are not given to this checker.

The search (``check_register``) returns a ``LinResult``; on failure it carries the longest
linearizable prefix found and the operation that could not be placed, for the report.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

from .history import FAIL, OK, UNKNOWN, Op

INF = float("inf")


@dataclass
class RegOp:
    kind: str                 # 'w' | 'c' | 'u' | 'd' | 'r'
    value: Any                # written value (w/c/u) or observed value (r); None = absent
    invoke: float
    complete: float           # INF when indeterminate
    pending: bool = False     # indeterminate outcome
    src: Any = None           # originating history op (for reports)

    def describe(self) -> str:
        comp = "inf" if self.complete == INF else f"{self.complete:.3f}"
        v = "absent" if self.value is None else self.value
        tag = "?" if self.pending else ""
        s = f"{self.kind}{tag}({v}) [{self.invoke:.3f},{comp}]"
        if isinstance(self.src, Op):
            s += f"  <- {self.src.short()}"
        elif self.src is not None:
            s += f"  <- {self.src}"
        return s


@dataclass
class LinResult:
    ok: Optional[bool]                    # True, False, or None (search budget exhausted)
    key: Any = None
    n_ops: int = 0
    steps: int = 0
    best_prefix: list = field(default_factory=list)   # [RegOp] linearized, in order
    stuck_on: Optional[RegOp] = None                  # op whose completion could not be met
    stuck_state: Any = None
    message: str = ""
    excluded: list = field(default_factory=list)      # failed writes on the key (for reports)

    def explain(self, limit: int = 25) -> str:
        if self.ok:
            return f"key {self.key!r}: linearizable ({self.n_ops} ops)"
        if self.ok is None:
            return f"key {self.key!r}: UNDECIDED after {self.steps} steps ({self.n_ops} ops)"
        lines = [f"key {self.key!r}: NOT linearizable ({self.n_ops} ops). {self.message}",
                 "  longest linearizable prefix found (runs of equal reads collapsed):"]
        shown = []
        for op in self.best_prefix:
            if (op.kind == "r" and shown and shown[-1][0].kind == "r"
                    and shown[-1][0].value == op.value):
                shown[-1][1] += 1
            else:
                shown.append([op, 1])
        if len(shown) > limit:
            lines.append(f"  ... {len(shown) - limit} earlier entries ...")
        for op, count in shown[-limit:]:
            more = f"  (+{count - 1} more reads of the same value)" if count > 1 else ""
            lines.append("  ok   " + op.describe() + more)
        st = "absent" if self.stuck_state is None else self.stuck_state
        if self.stuck_on is not None:
            lines.append(f"  state after that prefix: {st}")
            lines.append("  STUCK " + self.stuck_on.describe())
        if self.excluded and self.stuck_on is not None and self.stuck_on.kind == "r":
            for op in self.excluded:
                v = op.value.get("description") if isinstance(op.value, dict) else op.value
                if self.stuck_on.value is not None and canon(v) == self.stuck_on.value:
                    lines.append(f"  => the value read was written only by a request answered "
                                 f"as definitely failed: {op.short()}")
        if self.excluded:
            lines.append("  writes on this key answered as definitely failed (so excluded; "
                         "if one took effect anyway, that explains the violation):")
            for op in self.excluded[-8:]:
                lines.append("    " + op.short())
        return "\n".join(lines)


def _step(state, op: RegOp):
    """Return (allowed, new_state)."""
    k = op.kind
    if k == "r":
        return state == op.value, state
    if k == "w":
        return True, op.value
    if k == "c":
        if op.pending:
            return True, (op.value if state is None else state)
        return state is None, op.value
    if k == "u":
        if state is None:
            return op.pending, state
        return True, op.value
    if k == "d":
        if op.pending:
            return True, None
        return state is not None, None
    raise ValueError(f"unknown op kind {k!r}")


def _prune(ops: list[RegOp]) -> list[RegOp]:
    """Drop indeterminate writes whose written value no read observed.

    An indeterminate op may always be placed after everything else (== never happened), so
    dropping one can only make a linearizable history stay linearizable; the converse holds
    when the op is unobserved and cannot change what later ops are allowed to do:
      * a pending 'u' never changes absence, so later c/u/d are unaffected, and any read
        between it and the next change would have returned its value: none did;
      * a pending 'w' or 'c' may turn absent into present, so it is only dropped when the
        key has no u/d ops (and, for 'c', no other create) whose allowance it could change.
    """
    observed = {op.value for op in ops if op.kind == "r" and op.value is not None}
    kinds = [op.kind for op in ops]
    has_ud = "u" in kinds or "d" in kinds
    n_creates = kinds.count("c")
    out = []
    for op in ops:
        if op.pending and op.value not in observed:
            if op.kind == "u":
                continue
            if op.kind == "w" and not has_ud and n_creates == 0:
                continue
            if op.kind == "c" and not has_ud and n_creates == 1:
                continue
        out.append(op)
    return out


class _Node:
    __slots__ = ("op", "idx", "is_call", "match", "prev", "next")

    def __init__(self, op, idx, is_call):
        self.op = op
        self.idx = idx
        self.is_call = is_call
        self.match = None
        self.prev = None
        self.next = None


def _resolve_observed(ops: list[RegOp]) -> list[RegOp]:
    """An indeterminate w/u/c whose (unique) value some read returned did take effect, and
    before every such read: make it determinate, completing at the earliest completion of
    those reads. Only done when no other op writes the same value."""
    writers: dict = {}
    for op in ops:
        if op.kind in ("w", "u", "c"):
            writers[op.value] = writers.get(op.value, 0) + 1
    first_seen: dict = {}
    for op in ops:
        if op.kind == "r" and op.value is not None:
            first_seen[op.value] = min(first_seen.get(op.value, INF), op.complete)
    out = []
    for op in ops:
        if (op.pending and op.kind in ("w", "u", "c") and writers.get(op.value) == 1
                and op.value in first_seen and first_seen[op.value] >= op.invoke):
            op = RegOp(op.kind, op.value, op.invoke, first_seen[op.value], pending=False,
                       src=op.src)
        out.append(op)
    return out


def check_register(ops: Iterable[RegOp], init=None, key=None,
                   max_steps: int = 2_000_000, prune: bool = True) -> LinResult:
    ops = [RegOp(o.kind, o.value, o.invoke, INF if o.pending else o.complete, o.pending,
                 o.src) for o in ops]
    if prune:
        ops = _prune(_resolve_observed(ops))
    n = len(ops)
    res = LinResult(ok=True, key=key, n_ops=n)
    if n == 0:
        return res
    for op in ops:
        if op.complete < op.invoke:
            raise ValueError(f"op completes before it is invoked: {op.describe()}")

    # Events: calls sort before returns at equal times (treat as overlapping: permissive).
    events = []
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        events.append((op.complete, 1, i))
    events.sort(key=lambda e: (e[0], e[1], e[2]))

    head = _Node(None, -1, False)
    prev = head
    calls_by_idx = {}
    for t, kind, i in events:
        node = _Node(ops[i], i, kind == 0)
        if kind == 0:
            calls_by_idx[i] = node
        else:
            calls_by_idx[i].match = node
        prev.next = node
        node.prev = prev
        prev = node

    def lift(e):
        e.prev.next = e.next
        e.next.prev = e.prev
        m = e.match
        m.prev.next = m.next
        if m.next is not None:
            m.next.prev = m.prev

    def unlift(e):
        m = e.match
        m.prev.next = m
        if m.next is not None:
            m.next.prev = m
        e.prev.next = e
        e.next.prev = e

    remaining_determinate = sum(1 for op in ops if not op.pending)
    state = init
    linearized = 0
    cache = set()
    calls = []          # stack of (call node, state before)
    best_depth = -1
    steps = 0
    entry = head.next
    while head.next is not None:
        if remaining_determinate == 0:
            return res
        steps += 1
        if steps > max_steps:
            res.ok = None
            res.steps = steps
            return res
        if entry.is_call:
            allowed, new_state = _step(state, entry.op)
            if allowed:
                bit = 1 << entry.idx
                ck = (linearized | bit, new_state)
                if ck not in cache:
                    cache.add(ck)
                    calls.append((entry, state))
                    state = new_state
                    linearized |= bit
                    if not entry.op.pending:
                        remaining_determinate -= 1
                    lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            # Reached the return of an op that is not linearized yet: backtrack.
            if len(calls) > best_depth:
                best_depth = len(calls)
                res.best_prefix = [c.op for c, _ in calls]
                res.stuck_on = entry.op
                res.stuck_state = state
            if not calls:
                res.ok = False
                break
            entry, state = calls.pop()
            linearized &= ~(1 << entry.idx)
            if not entry.op.pending:
                remaining_determinate += 1
            unlift(entry)
            entry = entry.next
    res.steps = steps
    if res.ok is False:
        res.message = ("no order of the operations respects both real time and the "
                       "register semantics")
    return res


# ----------------------------------------------------------------------------------------
# From a recorded history to per-key register histories
# ----------------------------------------------------------------------------------------

def canon(v) -> Optional[str]:
    """Hashable canonical form of a JSON value (None stays None = absent)."""
    if v is None:
        return None
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _interval(op: Op):
    comp = INF if op.outcome == UNKNOWN or op.complete is None else op.complete
    return op.invoke, comp


def task_titles_by_id(ops: Iterable[Op], errors: Optional[list] = None) -> dict:
    """id -> title from every answer that shows a task (ids are server-assigned)."""
    m: dict = {}

    def see(task, op):
        if not isinstance(task, dict) or "id" not in task:
            return
        tid, title = str(task["id"]), task.get("title")
        old = m.get(tid)
        if old is None:
            m[tid] = title
        elif old != title and errors is not None:
            errors.append(f"task id {tid} shown with two titles {old!r} and {title!r} "
                          f"(op {op.short()})")

    for op in ops:
        if op.outcome != OK:
            continue
        if op.f in ("create", "update", "read_task"):
            see(op.result, op)
        elif op.f == "list" and isinstance(op.result, dict):
            for t in op.result.get("tasks", []):
                see(t, op)
    return m


def job_register_histories(ops: Iterable[Op]) -> dict:
    """key -> [RegOp] for the /set registers (linearizable reads and writes only)."""
    ops = list(ops)
    keys = {op.key for op in ops if op.f == "set"}
    hist: dict = {k: [] for k in keys}
    for op in ops:
        if op.outcome == FAIL or op.stale:
            continue
        inv, comp = _interval(op)
        if op.f == "set":
            hist[op.key].append(RegOp("w", canon(op.value), inv, comp,
                                      pending=op.outcome == UNKNOWN, src=op))
        elif op.outcome != OK:
            continue            # reads without an answer tell nothing
        elif op.f == "get":
            r = op.result or {}
            if op.key not in hist:
                hist[op.key] = []
            val = canon(r.get("value")) if r.get("found") else None
            hist[op.key].append(RegOp("r", val, inv, comp, src=op))
        elif op.f == "get_all":
            data = op.result or {}
            for k in set(hist) | set(data):
                if k not in hist:
                    hist[k] = []
                hist[k].append(RegOp("r", canon(data.get(k)), inv, comp, src=op))
    return hist


def task_register_histories(ops: Iterable[Op], errors: Optional[list] = None) -> dict:
    """title -> [RegOp] where the register holds the task's description (None = absent).

    Titles are unique per create in the workload, so a title names one task even when the
    create's answer (and so its id) was lost; ids are mapped back to titles through every
    answer that showed a task.
    """
    ops = list(ops)
    id2title = task_titles_by_id(ops, errors)
    titles = set()
    for op in ops:
        if op.f == "create" and isinstance(op.value, dict):
            titles.add(op.value.get("title"))
    hist: dict = {t: [] for t in titles}

    def add(title, rop):
        hist.setdefault(title, []).append(rop)

    for op in ops:
        if op.stale:
            continue
        inv, comp = _interval(op)
        pending = op.outcome == UNKNOWN
        if op.f == "create":
            if op.outcome == FAIL:
                continue
            add(op.value["title"], RegOp("c", canon(op.value.get("description")), inv, comp,
                                         pending=pending, src=op))
        elif op.f in ("update", "delete"):
            title = id2title.get(str(op.key))
            if title is None:
                continue        # id never shown with a title: cannot place it
            if op.outcome == FAIL:
                if op.status == 404:        # definite answer: the task did not exist
                    add(title, RegOp("r", None, inv, comp, src=op))
                continue
            if op.f == "update":
                add(title, RegOp("u", canon(op.value.get("description")), inv, comp,
                                 pending=pending, src=op))
            else:
                add(title, RegOp("d", None, inv, comp, pending=pending, src=op))
        elif op.outcome != OK:
            continue
        elif op.f == "read_task":
            title = id2title.get(str(op.key))
            if title is None:
                continue
            val = canon(op.result.get("description")) if isinstance(op.result, dict) else None
            add(title, RegOp("r", val, inv, comp, src=op))
        elif op.f == "list":
            r = op.result or {}
            tasks = r.get("tasks", [])
            complete_listing = r.get("total") is not None and r.get("total") == len(tasks)
            seen = {}
            for t in tasks:
                seen[t.get("title")] = t
            for title in (set(hist) | set(seen)):
                if title in seen:
                    add(title, RegOp("r", canon(seen[title].get("description")), inv, comp,
                                     src=op))
                elif complete_listing:
                    add(title, RegOp("r", None, inv, comp, src=op))
    return hist


def _failed_ops_for(ops: list, key: str) -> list:
    if key.startswith("job:"):
        k = key[4:]
        return [o for o in ops if o.f == "set" and o.key == k and o.outcome == FAIL]
    title = key[5:]
    id2title = task_titles_by_id(ops)
    return [o for o in ops if o.outcome == FAIL and o.status != 404 and (
        (o.f == "create" and isinstance(o.value, dict) and o.value.get("title") == title)
        or (o.f in ("update", "delete") and id2title.get(str(o.key)) == title))]


@dataclass
class LinReport:
    ok: bool
    checked_keys: int
    checked_ops: int
    failures: list       # [LinResult]
    undecided: list      # [LinResult]
    errors: list         # integrity errors found while mapping

    def explain(self) -> str:
        lines = [f"linearizability: {self.checked_keys} keys, {self.checked_ops} ops, "
                 f"{len(self.failures)} violations, {len(self.undecided)} undecided"]
        for e in self.errors:
            lines.append("  integrity: " + e)
        for r in self.failures[:5]:
            lines.append(r.explain())
        for r in self.undecided[:5]:
            lines.append(r.explain())
        return "\n".join(lines)


def check_history_linearizable(ops: Iterable[Op], max_steps: int = 2_000_000) -> LinReport:
    ops = list(ops)
    errors: list = []
    results = []
    for prefix, hists in (("job:", job_register_histories(ops)),
                          ("task:", task_register_histories(ops, errors))):
        for key in sorted(hists, key=str):
            results.append(check_register(hists[key], key=f"{prefix}{key}",
                                          max_steps=max_steps))
    failures = [r for r in results if r.ok is False]
    for r in failures:
        r.excluded = _failed_ops_for(ops, r.key)
    undecided = [r for r in results if r.ok is None]
    return LinReport(ok=not failures and not errors, checked_keys=len(results),
                     checked_ops=sum(r.n_ops for r in results), failures=failures,
                     undecided=undecided, errors=errors)
