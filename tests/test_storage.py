"""The write-ahead log and snapshots on real files: torn tails, corruption, crashes, locking."""
import os
import subprocess
import sys

import pytest

from storage import Storage, StorageError
from task_state import TaskStateMachine


def entries(first, last, term=1):
    return [(i, term, {"op": "set", "key": f"k{i}", "value": i}) for i in range(first, last + 1)]


def reopen(path, **kwargs):
    s = Storage(str(path), **kwargs)
    state, log = s.load()
    return s, state, log


def segment_files(path):
    wal = os.path.join(path, "wal")
    return sorted(os.path.join(wal, f) for f in os.listdir(wal))


def test_round_trip_hard_state_and_entries(tmp_path):
    s, state, log = reopen(tmp_path)
    assert state is None and log == [] and s.hard_state == (0, None)
    s.append((3, "http://a"), entries(1, 5, term=3))
    s.append(None, entries(6, 7, term=3))
    s.close()
    s, state, log = reopen(tmp_path)
    assert s.hard_state == (3, "http://a")
    assert [t for t, _ in log] == [3] * 7 and log[6][1]["value"] == 7
    s.close()


def test_conflicting_entries_override_earlier_ones(tmp_path):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 10, term=1))
    s.append((2, None), entries(6, 7, term=2))  # a follower's conflict truncation
    s.close()
    s, _, log = reopen(tmp_path)
    assert [t for t, _ in log] == [1] * 5 + [2, 2]
    s.close()


@pytest.mark.parametrize("cut", [1, 5, 9])
def test_torn_tail_is_cut_with_a_warning(tmp_path, caplog, cut):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 3))
    s.append(None, entries(4, 6))
    s.close()
    last = segment_files(tmp_path)[-1]
    size = os.path.getsize(last)
    with open(last, "r+b") as f:
        f.truncate(size - cut)  # the last record was only partly written
    s, _, log = reopen(tmp_path)
    assert len(log) == 3
    assert "torn or corrupt tail" in caplog.text
    s.append(None, entries(4, 5))  # the log keeps working after the cut
    s.close()
    s, _, log = reopen(tmp_path)
    assert len(log) == 5
    s.close()


def test_corrupt_record_cuts_the_log_there(tmp_path, caplog):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 3))
    s.append(None, entries(4, 6))
    s.append(None, entries(7, 9))
    s.close()
    seg = segment_files(tmp_path)[-1]
    data = bytearray(open(seg, "rb").read())
    marker = data.find(b'"k5"')
    data[marker + 1] ^= 0xFF  # flip a byte inside the second entries record
    open(seg, "wb").write(bytes(data))
    s, _, log = reopen(tmp_path)
    assert len(log) == 3
    assert "torn or corrupt tail" in caplog.text
    s.close()


def test_snapshot_then_compaction_drops_old_segments(tmp_path):
    s, _, _ = reopen(tmp_path, segment_bytes=200)  # roll segments quickly
    s.append((1, None), entries(1, 1))
    for i in range(2, 41):
        s.append(None, entries(i, i))
    sm = TaskStateMachine()
    for i, t, c in entries(1, 30):
        sm.apply(i, t, c)
    s.save_snapshot(*sm.snapshot())
    before = len(segment_files(tmp_path))
    s.compact(30)
    assert len(segment_files(tmp_path)) < before
    s.close()
    s, state, log = reopen(tmp_path)
    assert s.snapshot_meta["index"] == 30 and state["kv"]["k30"] == 30
    assert [c["value"] for _, c in log] == list(range(31, 41))
    s.close()


def test_crash_between_snapshot_and_log_truncation(tmp_path):
    """The snapshot is durable but old segments were not dropped: restart must not double-apply or lose."""
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 20))
    sm = TaskStateMachine()
    for i, t, c in entries(1, 12):
        sm.apply(i, t, c)
    s.save_snapshot(*sm.snapshot())
    s.close()  # "crash" before compact()
    s, state, log = reopen(tmp_path)
    assert s.snapshot_meta["index"] == 12 and len(state["kv"]) == 12
    assert [c["value"] for _, c in log] == list(range(13, 21))
    s.close()


def test_torn_snapshot_falls_back_to_the_previous_one(tmp_path, caplog):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 20))
    sm = TaskStateMachine()
    for i, t, c in entries(1, 10):
        sm.apply(i, t, c)
    s.save_snapshot(*sm.snapshot())
    older = os.listdir(os.path.join(tmp_path, "snap"))
    s.close()
    # A newer snapshot whose contents never reached the disk (renamed but not fsynced).
    with open(os.path.join(tmp_path, "snap", f"snap-{15:020d}.json"), "wb") as f:
        f.write(b'{"meta": {"ind')
    s, state, log = reopen(tmp_path)
    assert s.snapshot_meta["index"] == 10 and len(state["kv"]) == 10 and len(log) == 10
    assert "unreadable" in caplog.text and older
    s.close()


def test_snapshot_files_load_with_pickledb(tmp_path):
    """The product keeps its data in pickledb files: pickledb itself must read a snapshot."""
    from pickledb import PickleDB
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 5))
    state = {"tasks": {"t1": {"title": "é ☃"}}, "kv": {"k": [1, 2.5, None, {"x": True}]}}
    s.save_snapshot(5, 1, state)
    s.close()
    [name] = os.listdir(os.path.join(tmp_path, "snap"))
    db = PickleDB(os.path.join(tmp_path, "snap", name))
    assert db.load() and db.get("state") == state and db.get("meta")["index"] == 5


def test_installed_snapshot_supersedes_stale_log(tmp_path):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 30, term=1))  # includes uncommitted entries 21..30 of term 1
    s.save_snapshot(25, 2, {"tasks": {}, "kv": {"from": "leader"}}, installed=True)
    s.append((2, None), entries(26, 27, term=2))
    s.close()
    s, state, log = reopen(tmp_path)
    assert state == {"tasks": {}, "kv": {"from": "leader"}}
    assert [t for t, _ in log] == [2, 2] and s.hard_state == (2, None)
    s.close()


def test_data_dir_is_locked(tmp_path):
    s = Storage(str(tmp_path))
    with pytest.raises(StorageError, match="in use"):
        Storage(str(tmp_path))
    code = "import sys; sys.path.insert(0, %r); from storage import Storage; Storage(%r)" % (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))), str(tmp_path))
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert other.returncode != 0 and "in use by another process" in other.stderr
    s.close()
    Storage(str(tmp_path)).close()  # free again once released


@pytest.mark.parametrize("point", ["wal_before_fsync", "snapshot_before_rename", "snapshot_before_truncate"])
def test_crash_points_exit_hard_and_restart_cleanly(tmp_path, point):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = f"""
import sys; sys.path.insert(0, {root!r})
from storage import Storage
from task_state import TaskStateMachine
s = Storage({str(tmp_path)!r}); s.load()
sm = TaskStateMachine()
for i in range(1, 6):
    e = (i, 1, {{"op": "set", "key": "k%d" % i, "value": i}})
    s.append((1, None) if i == 1 else None, [e])
    sm.apply(*e)
s.save_snapshot(*sm.snapshot())
s.compact(5)
print("survived")
"""
    env = {**os.environ, "PICKLEDB_CRASH_POINT": point + (":3" if point == "wal_before_fsync" else "")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 137 and "survived" not in r.stdout
    s, state, log = reopen(tmp_path)
    applied = dict((state or {}).get("kv", {}))
    for _, c in log:
        applied[c["key"]] = c["value"]
    # Whatever was fsynced before the crash is all there, in order, without gaps.
    expected_min = 2 if point == "wal_before_fsync" else 5
    assert [applied[f"k{i}"] for i in range(1, len(applied) + 1)] == list(range(1, len(applied) + 1))
    assert len(applied) >= expected_min
    s.close()


def test_snapshots_work_from_a_thread_that_runs_an_event_loop(tmp_path):
    """pickledb's sync methods turn into unawaited coroutines inside a running event loop
    (Playwright's sync API keeps one in the test thread); storage must still write and read."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    async def inside_a_loop():
        s, _, _ = reopen(tmp_path)
        s.append((1, None), entries(1, 5))
        s.save_snapshot(5, 1, {"tasks": {}, "kv": {"k": "v"}})
        s.close()
        s, state, log = reopen(tmp_path)
        s.close()
        return state, log

    # A thread of its own: this test thread may already run Playwright's loop.
    with ThreadPoolExecutor(1) as pool:
        state, log = pool.submit(asyncio.run, inside_a_loop()).result()
    assert state == {"tasks": {}, "kv": {"k": "v"}} and log == []
