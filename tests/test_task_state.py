"""The state machine: deterministic apply, snapshot and restore."""
import orjson

from task_state import IDEM_TTL, Replayed, TaskStateMachine

COMMANDS = [
    {"op": "create", "task": {"id": "a", "title": "A", "description": "", "completed": False,
                              "created_at": "t1", "updated_at": "t1", "version": 1}},
    {"op": "create", "task": {"id": "b", "title": "B", "description": "", "completed": False,
                              "created_at": "t2", "updated_at": "t2", "version": 1}},
    {"op": "update", "id": "a", "fields": {"completed": True}, "updated_at": "t3"},
    {"op": "update", "id": "zz", "fields": {"title": "x"}, "updated_at": "t4"},
    {"op": "delete", "id": "b"},
    {"op": "delete", "id": "b"},
    {"op": "set", "key": "k", "value": [1, 2]},
    {"op": "noop"},
]


def run_all():
    sm = TaskStateMachine()
    results = [sm.apply(i, 1, c) for i, c in enumerate(COMMANDS, start=1)]
    return sm, results


def test_apply_is_deterministic_and_reports_outcomes():
    (a, ra), (b, rb) = run_all(), run_all()
    assert ra == rb and a.tasks == b.tasks and a.kv == b.kv
    assert [status for status, _ in ra] == [201, 201, 200, 404, 200, 404, 200, 200]
    assert a.tasks["a"]["completed"] is True and a.tasks["a"]["version"] == 2
    assert a.tasks["a"]["updated_at"] == "t3" and "b" not in a.tasks
    assert a.applied_index == len(COMMANDS)


def test_updates_never_mutate_a_task_that_a_snapshot_holds():
    sm = TaskStateMachine()
    sm.apply(1, 1, COMMANDS[0])
    index, term, snap = sm.snapshot()
    sm.apply(2, 1, COMMANDS[2])
    assert snap["tasks"]["a"]["completed"] is False and index == 1


def test_restore_and_listing_order():
    sm, _ = run_all()
    index, term, state = sm.snapshot()
    other = TaskStateMachine()
    other.restore(index, term, state)
    assert other.tasks == sm.tasks and other.kv == sm.kv and other.applied_index == index
    other.apply(index + 1, 2, {"op": "create", "task": {**COMMANDS[1]["task"], "id": "c"}})
    tasks, total, index = other.list_tasks(10, 0)
    assert [t["id"] for t in tasks] == ["c", "a"] and total == 2 and index == other.applied_index
    assert other.list_tasks(1, 1)[0][0]["id"] == "a"
    assert other.list_tasks(5, 2) == ([], 2, other.applied_index)


def test_key_values_are_listed_in_pages_in_the_order_first_set():
    sm = TaskStateMachine()
    for i, key in enumerate(["b", "a", "c", "a"], start=1):
        sm.apply(i, 1, {"op": "set", "key": key, "value": i})
    assert sm.list_kv(10, 0) == ([("b", 1), ("a", 4), ("c", 3)], 3)
    assert sm.list_kv(1, 1) == ([("a", 4)], 3)
    assert sm.list_kv(2, 3) == ([], 3)


def keyed(command: dict, key: str, fp: str = "f1", at: float = 1000.0) -> dict:
    return {**command, "idem": {"key": key, "fp": fp, "at": at}}


def test_a_repeated_key_returns_the_first_answer_and_changes_nothing():
    sm = TaskStateMachine()
    first = sm.apply(1, 1, keyed(COMMANDS[0], "k1"))
    again = sm.apply(2, 1, keyed({**COMMANDS[0], "task": {**COMMANDS[0]["task"], "id": "other"}}, "k1"))
    assert first == (201, COMMANDS[0]["task"]) and again == first and isinstance(again, Replayed)
    assert list(sm.tasks) == ["a"]
    assert sm.apply(3, 1, keyed(COMMANDS[1], "k1", fp="f2"))[0] == 422
    assert sm.apply(3, 1, keyed(COMMANDS[1], "k1", fp="f2"))[1]["error"] == "idempotency_key_reused"
    assert list(sm.tasks) == ["a"] and [c["index"] for c in sm.feed] == [1]
    assert sm.stored_answer("k1", "f1") == first and sm.stored_answer("k1", "f2")[0] == 422
    assert sm.stored_answer("k2", "f1") is None


def test_keys_expire_by_the_applied_entries_clock_and_a_count_cap(monkeypatch):
    monkeypatch.setattr("task_state.IDEM_MAX_KEYS", 3)
    sm = TaskStateMachine()
    sm.apply(1, 1, keyed({"op": "set", "key": "x", "value": 1}, "old", at=1000.0))
    # An entry dated earlier (a leader whose clock is behind) does not move the clock back.
    sm.apply(2, 1, keyed({"op": "set", "key": "x", "value": 2}, "skewed", at=900.0))
    assert list(sm.idem_keys) == ["old", "skewed"] and sm.idem_clock == 1000.0
    sm.apply(3, 1, keyed({"op": "set", "key": "x", "value": 3}, "late", at=1000.0 + IDEM_TTL - 1))
    assert list(sm.idem_keys) == ["old", "skewed", "late"]
    sm.apply(4, 1, keyed({"op": "set", "key": "x", "value": 4}, "later", at=1000.0 + IDEM_TTL))
    assert list(sm.idem_keys) == ["late", "later"]  # both stored at clock 1000: 24 h later they go
    # The key was forgotten, so it applies again.
    assert sm.apply(5, 1, keyed({"op": "set", "key": "x", "value": 5}, "old", at=1000.0 + IDEM_TTL)) == \
        (200, {"key": "x", "value": 5})
    sm.apply(6, 1, keyed({"op": "set", "key": "x", "value": 6}, "newest", at=1000.0 + IDEM_TTL))
    assert list(sm.idem_keys) == ["later", "old", "newest"]  # the count cap keeps the 3 newest
    assert sm.idem_bytes == sum(len(orjson.dumps(v[2])) for v in sm.idem_keys.values())


def test_snapshots_carry_the_key_table_and_old_snapshots_load():
    sm = TaskStateMachine()
    answer = sm.apply(1, 1, keyed(COMMANDS[0], "k1"))
    index, term, state = sm.snapshot()
    restored = TaskStateMachine()
    restored.restore(index, term, orjson.loads(orjson.dumps(state)))  # as read back from disk
    assert restored.apply(2, 1, keyed(COMMANDS[1], "k1")) == answer and list(restored.tasks) == ["a"]
    assert restored.idem_clock == 1000.0 and restored.idem_bytes == sm.idem_bytes
    old = TaskStateMachine()
    old.restore(index, term, {"tasks": state["tasks"], "kv": {}})  # written before the key table
    assert old.idem_keys == {} and old.apply(2, 1, keyed(COMMANDS[1], "k1"))[0] == 201


def test_if_match_is_checked_when_applied():
    sm = TaskStateMachine()
    sm.apply(1, 1, COMMANDS[0])
    update = {"op": "update", "id": "a", "fields": {"title": "x"}, "updated_at": "t"}
    assert sm.apply(2, 1, {**update, "if_match": [1]})[0] == 200
    status, body = sm.apply(3, 1, {**update, "if_match": [1]})  # the racing writer read version 1 too
    assert status == 412 and body["error"] == "precondition_failed" and body["current"]["version"] == 2
    assert sm.apply(4, 1, {**update, "if_match": []})[0] == 412
    assert sm.apply(5, 1, {**update, "if_match": "*"})[1]["version"] == 3
    assert sm.apply(6, 1, {"op": "delete", "id": "a", "if_match": [2]})[0] == 412
    assert sm.apply(7, 1, {"op": "delete", "id": "a", "if_match": [3]}) == (200, {"deleted": "a"})
    assert sm.apply(8, 1, {**update, "if_match": "*"}) == (412, {
        "error": "precondition_failed", "message": "task a does not exist", "current": None})
    assert sm.apply(9, 1, update)[0] == 404  # without If-Match: as before


def test_the_feed_keeps_the_newest_changes_and_says_where_it_starts(monkeypatch):
    monkeypatch.setattr("task_state.FEED_SIZE", 3)
    sm, _ = run_all()  # changes at 1, 2, 3, 5, 7 (4 and 6 failed, 8 is a no-op)
    assert [c["index"] for c in sm.feed] == [3, 5, 7] and sm.feed_floor == 2
    assert sm.changes_after(1, 10) == (None, 8)
    changes, applied = sm.changes_after(2, 10)
    assert [(c["index"], c["op"]) for c in changes] == [(3, "update"), (5, "delete"), (7, "set")]
    assert changes[0]["task"]["version"] == 2 and changes[1] == {"op": "delete", "id": "b", "index": 5}
    assert sm.changes_after(3, 1)[0] == [changes[1]] and sm.changes_after(7, 10) == ([], 8)
    index, term, state = sm.snapshot()
    sm.restore(index, term, state)
    assert sm.changes_after(7, 10) == (None, 8) and sm.changes_after(8, 10) == ([], 8)
