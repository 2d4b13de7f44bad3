"""The state machine: deterministic apply, snapshot and restore."""
from task_state import TaskStateMachine

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
