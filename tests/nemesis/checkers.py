"""Checkers other than linearizability. All are pure functions of recorded data and return
a ``CheckResult`` (``ok`` plus human-readable ``errors``).

* ``check_lost_writes(ops, final_jobs, final_tasks)``: every acknowledged ``/set`` and
  create is present in the healed cluster's final state unless a later (acknowledged or
  indeterminate) delete removed it; the final value of each key/task comes from a write
  that was not definitely superseded; nothing appears that no client wrote (phantoms);
  no task appears twice (a create applied twice).
* ``check_stale_reads(ops)``: stale reads may be old, but must never show a value that was
  never written (or whose write had definitely failed, or had not been invoked yet).
* ``check_convergence(snapshots)``: all replicas report the same applied index and the same
  tasks and jobs, equal to the leader's.
* ``check_one_leader_per_term(claims)``: at most one node claims leadership per term
  (claims parsed from the nodes' stderr logs by ``parse_leader_claims``).
* ``check_idempotent_retries(ops, final_tasks)``: every answer one Idempotency-Key got agrees,
  and no retried create exists twice.
* ``check_conditional_writes(ops)``: no two acknowledged If-Match writes on one version.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

from .history import FAIL, OK, Op
from .linearizability import canon, task_titles_by_id


@dataclass
class CheckResult:
    name: str
    ok: bool = True
    errors: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def fail(self, msg: str):
        self.ok = False
        self.errors.append(msg)

    def explain(self, limit: int = 20) -> str:
        head = f"{self.name}: {'OK' if self.ok else 'FAILED'}"
        if self.info:
            head += " (" + ", ".join(f"{k}={v}" for k, v in self.info.items()) + ")"
        lines = [head]
        for e in self.errors[:limit]:
            lines.append("  - " + e)
        if len(self.errors) > limit:
            lines.append(f"  ... and {len(self.errors) - limit} more")
        return "\n".join(lines)


def _failed_writers(ops) -> dict:
    """(object, canonical value) -> the definitely-failed write that carried it; object is
    ("job", key) or ("task", title)."""
    id2title = task_titles_by_id(ops)
    out = {}
    for op in ops:
        if op.outcome != FAIL or op.status == 404:
            continue
        if op.f == "set":
            out[("job", op.key, canon(op.value))] = op
        elif op.f == "create" and isinstance(op.value, dict):
            out[("task", op.value.get("title"), canon(op.value.get("description")))] = op
            out[("task-exists", op.value.get("title"), None)] = op
        elif op.f == "update" and isinstance(op.value, dict):
            title = id2title.get(str(op.key))
            out[("task", title, canon(op.value.get("description")))] = op
    return out


FAILED_NOTE = ("written only by a request the server answered as definitely failed "
               "(so the server misreported its outcome): ")


def _writes_by_key(ops):
    """job key -> [set ops that may have taken effect (ok or unknown)]."""
    out: dict = {}
    for op in ops:
        if op.f == "set" and op.outcome != FAIL:
            out.setdefault(op.key, []).append(op)
    return out


def _candidates(writes: list, value_of) -> set:
    """Values that may legitimately be the final one: written by an ok/unknown op that is
    not definitely superseded (completed before an acknowledged write to the same object
    was invoked)."""
    acked = [w for w in writes if w.outcome == OK]
    cands = set()
    for w in writes:
        done = w.complete if (w.outcome == OK and w.complete is not None) else None
        superseded = done is not None and any(a is not w and done < a.invoke for a in acked)
        if not superseded:
            cands.add(canon(value_of(w)))
    return cands


def _final_reason(writes, final_value, value_of) -> str:
    shown = ", ".join(f"{canon(value_of(w))} ({w.outcome} [{w.invoke:.3f},"
                      f"{'inf' if w.complete is None else round(w.complete, 3)}])"
                      for w in writes[-6:])
    return f"final value {final_value} is not the last write; last writes: {shown}"


def check_lost_writes(ops: Iterable[Op], final_jobs: dict, final_tasks: list,
                      ignore_keys: Iterable[str] = ()) -> CheckResult:
    ops = list(ops)
    res = CheckResult("lost-writes")
    ignore = set(ignore_keys)

    failed_w = _failed_writers(ops)

    # ---- /set registers (no delete exists for jobs) ----
    wbk = _writes_by_key(ops)
    n_acked_sets = 0
    for key, writes in sorted(wbk.items()):
        if key in ignore:
            continue
        acked = [w for w in writes if w.outcome == OK]
        n_acked_sets += len(acked)
        if key not in final_jobs:
            if acked:
                last = max(acked, key=lambda w: w.complete)
                res.fail(f"LOST WRITE: job {key!r} is missing after healing although "
                         f"{len(acked)} /set were acknowledged, e.g. {last.short()}")
            continue
        final = canon(final_jobs[key])
        cands = _candidates(writes, lambda w: w.value)
        if final not in cands:
            written = {canon(w.value) for w in writes}
            if final in written:
                res.fail(f"LOST WRITE: job {key!r}: "
                         + _final_reason(writes, final, lambda w: w.value))
            elif ("job", key, final) in failed_w:
                res.fail(f"PHANTOM: job {key!r} final value {final} was " + FAILED_NOTE
                         + failed_w[("job", key, final)].short())
            else:
                res.fail(f"PHANTOM: job {key!r} final value {final} was never written "
                         f"by a non-failed /set")
    all_set_keys = {op.key for op in ops if op.f == "set"}
    failed_vals = {}
    for op in ops:
        if op.f == "set" and op.outcome == FAIL:
            failed_vals.setdefault(op.key, set()).add(canon(op.value))
    for key, val in final_jobs.items():
        if key in ignore:
            continue
        if key not in all_set_keys:
            res.fail(f"PHANTOM: job {key!r}={val!r} in the final state was never written")
        elif key not in wbk and canon(val) in failed_vals.get(key, ()):
            res.fail(f"PHANTOM: job {key!r}={val!r} comes only from a /set that failed "
                     f"definitely")

    # ---- tasks ----
    integrity: list = []
    id2title = task_titles_by_id(ops, integrity)
    for e in integrity:
        res.fail("INTEGRITY: " + e)
    creates = {}
    for op in ops:
        if op.f == "create" and isinstance(op.value, dict):
            creates[op.value.get("title")] = op
    final_by_title: dict = {}
    for t in final_tasks:
        title = t.get("title")
        if title in final_by_title:
            res.fail(f"DUPLICATE: title {title!r} appears twice in the final state "
                     f"(ids {final_by_title[title].get('id')} and {t.get('id')}): "
                     f"a create was applied twice")
        final_by_title[title] = t
        if title not in id2title.values():
            id2title[str(t.get("id"))] = title

    updates: dict = {}
    deletes: dict = {}
    failed_deletes: dict = {}
    for op in ops:
        if op.f == "delete" and op.outcome == FAIL and op.status != 404:
            title = id2title.get(str(op.key))
            if title is not None:
                failed_deletes.setdefault(title, []).append(op)
    for op in ops:
        if op.f in ("update", "delete") and op.outcome != FAIL:
            title = id2title.get(str(op.key))
            if title is None:
                continue
            (updates if op.f == "update" else deletes).setdefault(title, []).append(op)

    n_acked_creates = 0
    for title, cop in sorted(creates.items(), key=lambda kv: str(kv[0])):
        present = title in final_by_title
        if cop.outcome == FAIL:
            if present:
                res.fail(f"PHANTOM: task {title!r} exists although its create was "
                         f"answered as definitely failed (the server misreported its "
                         f"outcome): {cop.short()}")
            continue
        if cop.outcome == OK:
            n_acked_creates += 1
        dels = deletes.get(title, [])
        if not present:
            if cop.outcome == OK and not dels:
                failed = failed_deletes.get(title, [])
                why = ("and no delete that may have taken effect was issued"
                       if not failed else
                       "; the only deletes issued on it were answered as definitely failed "
                       "(if one was applied anyway, the server misreported it): "
                       + "; ".join(d.short() for d in failed[-3:]))
                res.fail(f"LOST WRITE: acknowledged create of task {title!r} "
                         f"(id {(cop.result or {}).get('id')}) is missing after healing "
                         f"{why}. Create: {cop.short()}")
            continue
        t = final_by_title[title]
        if cop.outcome == OK and isinstance(cop.result, dict) and \
                str(cop.result.get("id")) != str(t.get("id")):
            res.fail(f"INTEGRITY: task {title!r} was acknowledged with id "
                     f"{cop.result.get('id')} but the final state has id {t.get('id')}")
        acked_dels = [d for d in dels if d.outcome == OK]
        if acked_dels:
            res.fail(f"RESURRECTED: task {title!r} is present after healing although a "
                     f"delete was acknowledged: {acked_dels[0].short()}")
        writes = [cop] + updates.get(title, [])
        cands = _candidates(writes, lambda w: w.value.get("description"))
        final = canon(t.get("description"))
        if final not in cands:
            written = {canon(w.value.get("description")) for w in writes}
            if final in written:
                res.fail(f"LOST WRITE: task {title!r}: "
                         + _final_reason(writes, final, lambda w: w.value.get("description")))
            elif ("task", title, final) in failed_w:
                res.fail(f"PHANTOM: task {title!r} final description {final} was "
                         + FAILED_NOTE + failed_w[("task", title, final)].short())
            else:
                res.fail(f"PHANTOM: task {title!r} final description {final} was never "
                         f"written")
    for title, t in final_by_title.items():
        if title not in creates:
            res.fail(f"PHANTOM: task {t!r} in the final state was never created")

    res.info = {"acked_sets": n_acked_sets, "acked_creates": n_acked_creates,
                "final_jobs": len([k for k in final_jobs if k not in ignore]),
                "final_tasks": len(final_tasks)}
    return res


def check_stale_reads(ops: Iterable[Op]) -> CheckResult:
    """Stale reads (and any read, really) must only show values that some non-failed write
    invoked before the read completed could have produced. Repeats of one bad value are
    reported once, with a count."""
    ops = list(ops)
    res = CheckResult("stale-reads")
    failed_w = _failed_writers(ops)
    job_writes: dict = {}
    for op in ops:
        if op.f == "set" and op.outcome != FAIL:
            job_writes.setdefault(op.key, []).append(op)
    creates = {}
    desc_writes: dict = {}
    id2title = task_titles_by_id(ops)
    for op in ops:
        if op.f == "create" and op.outcome != FAIL and isinstance(op.value, dict):
            creates[op.value["title"]] = op
            desc_writes.setdefault(op.value["title"], []).append(
                (op.invoke, canon(op.value.get("description"))))
    for op in ops:
        if op.f == "update" and op.outcome != FAIL:
            title = id2title.get(str(op.key))
            if title is not None:
                desc_writes.setdefault(title, []).append(
                    (op.invoke, canon(op.value.get("description"))))

    bad: dict = {}      # (what, detail) -> [count, first read]

    def flag(what, op):
        entry = bad.setdefault(what, [0, op])
        entry[0] += 1

    def job_check(key, value, by, op):
        v = canon(value)
        if any(w.invoke <= by and canon(w.value) == v for w in job_writes.get(key, ())):
            return
        f = failed_w.get(("job", key, v))
        if f is not None:
            flag(f"job {key!r}={v}, " + FAILED_NOTE + f.short(), op)
        else:
            flag(f"job {key!r}={v}, never written (before the read completed)", op)

    def task_check(task, by, op):
        title = task.get("title")
        c = creates.get(title)
        if c is None or c.invoke > by:
            f = failed_w.get(("task-exists", title, None))
            if f is not None:
                flag(f"task {title!r}, whose create was answered as definitely failed (the "
                     f"server misreported its outcome): {f.short()}", op)
            else:
                flag(f"task {title!r}, never created (before the read completed)", op)
            return
        d = canon(task.get("description"))
        if any(inv <= by and v == d for inv, v in desc_writes.get(title, ())):
            return
        f = failed_w.get(("task", title, d))
        if f is not None:
            flag(f"task {title!r} with description {d}, " + FAILED_NOTE + f.short(), op)
        else:
            flag(f"task {title!r} with description {d}, never written (before the read "
                 f"completed)", op)

    n = 0
    for op in ops:
        if not op.stale or op.outcome != OK:
            continue
        n += 1
        by = op.complete if op.complete is not None else float("inf")
        if op.f == "get":
            r = op.result or {}
            if r.get("found"):
                job_check(op.key, r.get("value"), by, op)
        elif op.f == "get_all":
            for k, v in (op.result or {}).items():
                job_check(k, v, by, op)
        elif op.f == "read_task":
            if isinstance(op.result, dict):
                task_check(op.result, by, op)
        elif op.f == "list":
            for t in (op.result or {}).get("tasks", []):
                task_check(t, by, op)
    for what, (count, first) in bad.items():
        res.fail(f"stale reads showed {what} ({count} reads; first: {first.short()})")
    res.info = {"stale_reads": n}
    return res


def _norm_tasks(tasks) -> dict:
    return {str(t.get("id")): t for t in tasks}


def check_convergence(snapshots: dict, leader: Optional[str]) -> CheckResult:
    """snapshots: {node_url: {"applied_index": int, "tasks": [task...], "jobs": {k: v}}}."""
    res = CheckResult("convergence")
    if not snapshots:
        res.fail("no snapshots taken")
        return res
    if leader is None or leader not in snapshots:
        res.fail(f"no leader snapshot (leader={leader!r})")
        return res
    ref = snapshots[leader]
    ref_tasks = _norm_tasks(ref["tasks"])
    ref_jobs = ref["jobs"]
    for node, snap in sorted(snapshots.items()):
        if node == leader:
            continue
        if snap.get("applied_index") != ref.get("applied_index"):
            res.fail(f"{node} applied_index={snap.get('applied_index')} but leader {leader} "
                     f"has {ref.get('applied_index')}")
        tasks = _norm_tasks(snap["tasks"])
        if tasks != ref_tasks:
            missing = sorted(set(ref_tasks) - set(tasks))
            extra = sorted(set(tasks) - set(ref_tasks))
            differ = sorted(i for i in set(tasks) & set(ref_tasks) if tasks[i] != ref_tasks[i])
            msg = f"{node} tasks differ from leader {leader}:"
            if missing:
                msg += f" missing ids {missing[:10]}"
            if extra:
                msg += f" extra ids {extra[:10]}"
            for i in differ[:3]:
                msg += f" id {i}: {json.dumps(tasks[i], sort_keys=True)} != " \
                       f"{json.dumps(ref_tasks[i], sort_keys=True)};"
            res.fail(msg)
        if snap["jobs"] != ref_jobs:
            keys = set(snap["jobs"]) | set(ref_jobs)
            diff = sorted(k for k in keys if snap["jobs"].get(k, "<absent>") !=
                          ref_jobs.get(k, "<absent>"))
            res.fail(f"{node} jobs differ from leader {leader} on keys {diff[:10]}: " +
                     ", ".join(f"{k}: {snap['jobs'].get(k, '<absent>')!r} vs "
                               f"{ref_jobs.get(k, '<absent>')!r}" for k in diff[:3]))
    res.info = {"nodes": len(snapshots), "applied_index": ref.get("applied_index"),
                "tasks": len(ref_tasks), "jobs": len(ref_jobs)}
    return res


LEADER_RE = re.compile(r"ROLE leader term=(\d+) node=(\S+)")


def parse_leader_claims(text: str, source: str = "") -> list:
    """[(term, node, source)] for every ``ROLE leader term=<T> node=<url>`` line."""
    return [(int(m.group(1)), m.group(2), source) for m in LEADER_RE.finditer(text)]


def check_one_leader_per_term(claims: Iterable) -> CheckResult:
    res = CheckResult("one-leader-per-term")
    by_term: dict = {}
    n = 0
    for term, node, source in claims:
        n += 1
        by_term.setdefault(term, {}).setdefault(node, set()).add(source)
    for term in sorted(by_term):
        nodes = by_term[term]
        if len(nodes) > 1:
            res.fail(f"term {term} has {len(nodes)} leaders: " +
                     "; ".join(f"{n} (logged in {', '.join(sorted(s))})"
                               for n, s in sorted(nodes.items())))
    res.info = {"claims": n, "terms": len(by_term)}
    return res


def check_idempotent_retries(ops: Iterable[Op], final_tasks: Optional[list]) -> CheckResult:
    """Writes retried under one Idempotency-Key: every definite answer a key got is the same
    (status and body), no key is refused as reused (each operation has its own), and no create
    is applied twice: at most one task carries each create's title, and it is the task the
    create's answers name."""
    c = CheckResult("idempotent-retries")
    by_key: dict = {}
    retried = 0
    for op in ops:
        if op.idem_key is None:
            continue
        retried += op.attempts > 1
        by_key.setdefault(op.idem_key, []).append(op)
    created: dict = {}  # title -> task id the create's answers name (None: no answer)
    for key, key_ops in by_key.items():
        if len(key_ops) > 1:
            c.fail(f"key {key} was sent by {len(key_ops)} operations: "
                   + "; ".join(o.short() for o in key_ops[:3]))
        answers = [a for o in key_ops for a in (o.answers or [])]
        for status, body in answers:
            if status == 422:
                c.fail(f"key {key} refused as reused: {body} in {key_ops[0].short()}")
        distinct = {json.dumps(a, sort_keys=True) for a in answers}
        if len(distinct) > 1:
            c.fail(f"key {key} got {len(distinct)} different answers: {sorted(distinct)[:3]} "
                   f"in {key_ops[0].short()}")
        op = key_ops[0]
        if op.f == "create" and isinstance(op.value, dict):
            ids = {b.get("id") for s, b in answers if s == 201 and isinstance(b, dict)}
            created[op.value.get("title")] = next(iter(ids)) if len(ids) == 1 else None
    if final_tasks is not None:
        seen: dict = {}
        for task in final_tasks:
            seen.setdefault(task.get("title"), []).append(task.get("id"))
        for title, ids in seen.items():
            if title not in created:  # not a keyed create of this history (a hostile request's)
                continue
            if len(ids) > 1:
                c.fail(f"create of title {title!r} applied {len(ids)} times: tasks {ids}")
            elif created[title] is not None and ids[0] != created[title]:
                c.fail(f"task titled {title!r} is {ids[0]}, but its create was answered {created[title]}")
    c.info.update({"keys": len(by_key), "retried": retried})
    return c


def check_conditional_writes(ops: Iterable[Op]) -> CheckResult:
    """No two acknowledged If-Match writes name the same version of one task (of racing
    writers that read the same version at most one wins), and a conditional update that
    won produced exactly the next version."""
    c = CheckResult("conditional-writes")
    winners: dict = {}
    losers = 0
    for op in ops:
        if op.if_match is None:
            continue
        if op.status == 412:
            losers += 1
        if op.outcome != OK:
            continue
        winners.setdefault((op.key, op.if_match), []).append(op)
        if op.f == "update" and isinstance(op.result, dict) and op.result.get("version") != op.if_match + 1:
            c.fail(f"update with If-Match {op.if_match} produced version {op.result.get('version')}: {op.short()}")
    for (task, version), won in winners.items():
        if len(won) > 1:
            c.fail(f"{len(won)} writes with If-Match {version} on task {task} all succeeded: "
                   + "; ".join(o.short() for o in won[:3]))
    c.info.update({"won": len(winners), "refused_412": losers})
    return c
