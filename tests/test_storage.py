"""The write-ahead log and snapshots on real files: torn tails, corruption, crashes, locking,
a full or read-only disk."""
import contextlib
import errno
import os
import random
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from raft_core import VOTE_REQ, VOTE_RESP, RaftCore
from storage import FileSystem, Storage, StorageError, decode_snapshot
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


def snapshot_files(path):
    snap = os.path.join(path, "snap")
    return sorted(os.path.join(snap, f) for f in os.listdir(snap))


def files(path):
    """Every file under `path` with its bytes: recovery that refuses must leave this unchanged."""
    found = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


def record_offsets(segment):
    """Byte offsets of the records in a WAL segment ([u32 length][u32 crc][body])."""
    data, offsets, pos = open(segment, "rb").read(), [], 0
    while pos < len(data):
        offsets.append(pos)
        pos += 8 + struct.unpack_from("<I", data, pos)[0]
    return offsets


def flip_bit(path, offset, bit=0):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def replay(state, log):
    """The key-value contents a node would serve: snapshot plus log."""
    applied = dict((state or {}).get("kv", {}))
    for _, c in log:
        applied[c["key"]] = c["value"]
    return applied


def snapshot_at(storage, index, term=1):
    sm = TaskStateMachine()
    for i, t, c in entries(1, index, term):
        sm.apply(i, t, c)
    storage.save_snapshot(*sm.snapshot())


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


def tear_by_truncating(path, n):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - n)


def tear_by_zeroing(path, n):  # the file grew but the last bytes never reached the disk
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - n)
        f.write(bytes(n))


def tear_by_zero_extension(path, n):  # the next write's size change reached the disk, its data did not
    with open(path, "ab") as f:
        f.write(bytes(n))


@pytest.mark.parametrize("tear, n, kept", [
    (tear_by_truncating, 1, 3), (tear_by_truncating, 5, 3), (tear_by_truncating, 60, 3),
    (tear_by_zeroing, 1, 3), (tear_by_zeroing, 40, 3), (tear_by_zero_extension, 3, 6),
    (tear_by_zero_extension, 4096, 6)])
def test_torn_tail_is_cut_with_a_warning(tmp_path, caplog, tear, n, kept):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 3))
    s.append(None, entries(4, 6))
    s.close()
    tear(segment_files(tmp_path)[-1], n)
    s, _, log = reopen(tmp_path)
    assert len(log) == kept
    assert "torn tail" in caplog.text
    s.append(None, entries(kept + 1, 8))  # the log keeps working after the cut
    s.close()
    s, _, log = reopen(tmp_path)
    assert [c["value"] for _, c in log] == list(range(1, 9))
    s.close()


def three_records(path, **kwargs):
    """A WAL with a hard state and three entries records (k1..k9); returns its one segment."""
    s, _, _ = reopen(path, **kwargs)
    s.append((1, None), entries(1, 3))
    s.append(None, entries(4, 6))
    s.append(None, entries(7, 9))
    s.close()
    return segment_files(path)[-1]


# (record, byte within it, bit): the records are [hs of the new segment, hs (1, None), es 1-3,
# es 4-6, es 7-9]; bytes 0-3 are the length, 4-7 the CRC, then the body. The last two hit the
# final record, which is complete.
DAMAGE = [(3, 20, 0), (3, 2, 4), (3, 0, 0), (3, 5, 7), (2, 40, 3), (1, 12, 1), (0, 10, 1),
          (4, 30, 2), (4, 2, 4)]


@pytest.mark.parametrize("record, byte, bit", DAMAGE)
def test_damage_in_the_wal_refuses_to_start_and_changes_nothing(tmp_path, record, byte, bit):
    """Issue 9 item 2: one flipped bit is corruption, not a torn tail. Before the fix the
    node cut every record from there on (acknowledged entries and votes included) and started."""
    segment = three_records(tmp_path)
    offset = record_offsets(segment)[record]
    flip_bit(segment, offset + byte, bit)
    before = files(tmp_path)
    with pytest.raises(StorageError) as refused:
        Storage(str(tmp_path)).load()
    assert f"{segment} is corrupt at byte {offset}" in str(refused.value)
    assert files(tmp_path) == before
    flip_bit(segment, offset + byte, bit)  # repaired by hand: everything is still there
    s, _, log = reopen(tmp_path)
    assert [c["value"] for _, c in log] == list(range(1, 10)) and s.hard_state == (1, None)
    s.close()


def write_small_segments(tmp_path) -> None:
    """Entries 1..8 in their own records, over several 100-byte segments."""
    s, _, _ = reopen(tmp_path, segment_bytes=100)
    s.append((1, None), entries(1, 1))
    for i in range(2, 9):
        s.append(None, entries(i, i))
    s.close()


def test_damage_in_an_earlier_segment_refuses_even_at_its_end(tmp_path):
    """Only the last segment can have been torn by a crash: the earlier ones were fsynced whole."""
    write_small_segments(tmp_path)
    first = segment_files(tmp_path)[0]
    tear_by_truncating(first, 3)
    before = files(tmp_path)
    with pytest.raises(StorageError, match=f"{first} is corrupt at byte"):
        Storage(str(tmp_path)).load()
    assert files(tmp_path) == before


def test_a_missing_segment_or_a_gap_in_the_indexes_refuses(tmp_path):
    write_small_segments(tmp_path)
    segments = segment_files(tmp_path)
    assert len(segments) >= 4
    os.rename(segments[1], str(tmp_path / "aside"))
    with pytest.raises(StorageError, match=f"{segments[1]} is missing"):
        Storage(str(tmp_path)).load()
    os.rename(str(tmp_path / "aside"), segments[1])
    gap = tmp_path / "gap"
    s, _, _ = reopen(gap)
    s.append((1, None), entries(1, 3))
    s.append(None, entries(5, 6))  # a record the storage layer must never have been given
    s.close()
    with pytest.raises(StorageError, match="entry 5 follows entry 3"):
        Storage(str(gap)).load()


@pytest.mark.parametrize("compacted", [False, True])
def test_a_cut_at_or_below_the_snapshot_stays_cut_after_a_restart(tmp_path, compacted):
    """Issue 9 item 1: entry 3 of term 2 cut 4 and 5 of term 1; a snapshot at 3 must not bring
    them back. Before the fix the reopened log ended at (1, 5) and the node voted for a
    candidate whose log lacked the committed entry 3."""
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 5, term=1))
    s.append((2, None), entries(3, 3, term=2))
    sm = TaskStateMachine()
    for e in entries(1, 2, term=1) + entries(3, 3, term=2):
        sm.apply(*e)
    s.save_snapshot(*sm.snapshot())
    if compacted:
        s.compact(3)
    s.close()
    s, state, log = reopen(tmp_path)
    s.close()
    assert log == [] and s.snapshot_meta["index"] == 3 and s.snapshot_meta["term"] == 2
    assert s.hard_state == (2, None)
    members = [{"id": n, "url": f"http://{n}:1", "role": "voter"} for n in "abc"]
    core = RaftCore("a", members, election_timeout=1.0, heartbeat_interval=0.2, now=0.0,
                    term=2, snap_index=3, snap_term=2, entries=log)
    assert (core.last_index(), core.last_term()) == (3, 2)
    core.step({"type": VOTE_REQ, "from": "b", "to": "a", "term": 3, "last_index": 5, "last_term": 1,
               "rid": 7})
    [reply] = [m for m in core.ready().messages if m["type"] == VOTE_RESP]
    assert reply["granted"] is False


def test_snapshot_then_compaction_drops_old_segments(tmp_path):
    s, _, _ = reopen(tmp_path, segment_bytes=200)  # roll segments quickly
    s.append((1, None), entries(1, 1))
    for i in range(2, 41):
        s.append(None, entries(i, i))
    snapshot_at(s, 30)
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


def compacted_node(path):
    """Entries 1..40 in many segments, a snapshot at 30, segments up to it dropped."""
    s, _, _ = reopen(path, segment_bytes=200)
    s.append((1, None), entries(1, 1))
    for i in range(2, 41):
        s.append(None, entries(i, i))
    snapshot_at(s, 30)
    s.compact(30)
    s.close()
    assert os.path.basename(segment_files(path)[0]) != "0000000000.wal"


def damage_snapshot(path):
    [snap] = snapshot_files(path)
    flip_bit(snap, os.path.getsize(snap) // 2, 2)
    return snap, "is corrupt"


def delete_snapshot(path):
    [snap] = snapshot_files(path)
    os.remove(snap)
    return os.path.join(path, "wal"), "there is no snapshot"


def delete_snapshot_keep_an_older_one(path):
    [snap] = snapshot_files(path)
    os.remove(snap)
    older = os.path.join(path, "snap", f"snap-{10:020d}.json")
    s = Storage(str(path) + "-scratch")  # a valid snapshot at 10 of the same history
    s.load()
    snapshot_at(s, 10)
    s.close()
    os.rename(os.path.join(str(path) + "-scratch", "snap", os.path.basename(older)), older)
    return segment_files(path)[0], "the log starts at index"


@pytest.mark.parametrize("damage", [damage_snapshot, delete_snapshot, delete_snapshot_keep_an_older_one])
def test_a_bad_or_missing_snapshot_over_a_compacted_log_refuses_to_start(tmp_path, damage):
    """Issue 9 item 3: before the fix the node started empty and cut its intact WAL as a 'gap'."""
    compacted_node(tmp_path)
    named, reason = damage(tmp_path)
    before = files(tmp_path)
    with pytest.raises(StorageError) as refused:
        Storage(str(tmp_path)).load()
    assert named in str(refused.value) and reason in str(refused.value)
    assert files(tmp_path) == before


def test_a_corrupt_newest_snapshot_refuses_even_with_an_older_one(tmp_path):
    """Snapshot contents are fsynced before the rename that names them, so a bad named snapshot is
    damage, never a crash: no falling back to an older one (the log may have been superseded)."""
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 20))
    snapshot_at(s, 10)
    s.close()
    with open(os.path.join(tmp_path, "snap", f"snap-{15:020d}.json"), "wb") as f:
        f.write(b'{"meta": {"ind')
    with pytest.raises(StorageError, match="snap-00000000000000000015.json is corrupt"):
        Storage(str(tmp_path)).load()


def test_a_missing_snapshot_is_fine_while_the_log_starts_at_one(tmp_path):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 20))
    snapshot_at(s, 10)
    s.close()
    os.remove(snapshot_files(tmp_path)[0])
    s, state, log = reopen(tmp_path)
    assert state is None and [c["value"] for _, c in log] == list(range(1, 21))
    s.close()


def test_every_flipped_bit_of_a_snapshot_is_detected(tmp_path):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 3))
    snapshot_at(s, 3)
    s.close()
    data = open(snapshot_files(tmp_path)[0], "rb").read()
    meta, state = decode_snapshot(data)
    assert meta == {"index": 3, "term": 1, "wal_floor": 0} and state["kv"] == {"k1": 1, "k2": 2, "k3": 3}
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(StorageError):
            decode_snapshot(bytes(damaged))
    for cut in (1, len(data) // 2, len(data) - 1):
        with pytest.raises(StorageError):
            decode_snapshot(data[:cut])


def test_snapshots_of_earlier_versions_still_load_locally(tmp_path, caplog):
    """Files written before checksums (plain {"meta", "state"}) load with a warning; over the
    network (decode_snapshot) only checksummed ones are accepted."""
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 5))
    s.close()
    legacy = orjson.dumps({"meta": {"index": 3, "term": 1, "wal_floor": 0},
                           "state": {"tasks": {}, "kv": {"k1": 1, "k2": 2, "k3": 3}}})
    with open(os.path.join(tmp_path, "snap", f"snap-{3:020d}.json"), "wb") as f:
        f.write(legacy)
    s, state, log = reopen(tmp_path)
    assert state["kv"]["k3"] == 3 and len(log) == 2 and "no checksum" in caplog.text
    s.close()
    with pytest.raises(StorageError, match="no checksum trailer"):
        decode_snapshot(legacy)


def test_snapshot_files_load_with_pickledb(tmp_path):
    """The product keeps its data in pickledb files: pickledb itself must read a snapshot."""
    from pickledb import PickleDB
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 5))
    state = {"tasks": {"t1": {"title": "é ☃"}}, "kv": {"k": [1, 2.5, None, {"x": True}]}}
    s.save_snapshot(5, 1, state)
    s.close()
    [name] = os.listdir(os.path.join(tmp_path, "snap"))

    def load_with_pickledb():  # its sync API does nothing in a thread that runs an event loop
        db = PickleDB(os.path.join(tmp_path, "snap", name))  # (Playwright's tests leave one running)
        return db.load(), db.get("state"), db.get("meta")
    with ThreadPoolExecutor(1) as fresh_thread:
        loaded, loaded_state, meta = fresh_thread.submit(load_with_pickledb).result()
    assert loaded and loaded_state == state and meta["index"] == 5


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
    os.remove(snapshot_files(tmp_path)[0])  # without it, the log after 25 means nothing
    with pytest.raises(StorageError, match="there is no snapshot"):
        Storage(str(tmp_path)).load()


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
    assert not [f for f in snapshot_files(tmp_path) if f.endswith(".tmp")]
    s.close()


def test_snapshots_work_from_a_thread_that_runs_an_event_loop(tmp_path):
    """Storage must work in a thread that runs an event loop (Playwright's sync API keeps one in
    the test thread): pickledb's sync methods, which it once called, silently do nothing there."""
    import asyncio

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


@contextlib.contextmanager
def small_disk(tmp_path, kib=256):
    """A real tmpfs of `kib` KiB (the suite runs as root, as CI does), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(disk)], check=True)
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)  # lazy: even if a file is still open


def fill(disk):
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_disk_gives_clear_errors_and_leaves_no_debris(tmp_path):
    """Issue 9 item 17: before the fix a start on a full disk raised a raw OSError and left an
    empty WAL segment, and failed snapshots left their temp files."""
    with small_disk(tmp_path) as disk:
        s, _, _ = reopen(disk / "old")
        s.append((1, None), entries(1, 5))
        snapshot_at(s, 3)
        s.close()
        fill(disk)

        with pytest.raises(StorageError, match="No space left on device"):
            Storage(str(disk / "new")).load()
        assert os.listdir(disk / "new" / "wal") == []
        with pytest.raises(StorageError, match="No space left on device"):  # and the lock was released
            Storage(str(disk / "new")).load()

        s, state, log = reopen(disk / "old")  # a healthy log starts without writing
        assert replay(state, log) == {f"k{i}": i for i in range(1, 6)}
        assert len(segment_files(disk / "old")) == 1
        with pytest.raises(StorageError, match="No space left on device"):
            s.append(None, entries(6, 200))
        with pytest.raises(StorageError, match="not writable"):
            s.append(None, entries(6, 6))
        with pytest.raises(StorageError, match="No space left on device"):
            snapshot_at(s, 5)
        assert [os.path.basename(f) for f in snapshot_files(disk / "old")] == [f"snap-{3:020d}.json"]
        s.close()

        os.remove(disk / "filler")
        s, state, log = reopen(disk / "old")
        assert replay(state, log) == {f"k{i}": i for i in range(1, 6)}
        s.append(None, entries(6, 6))
        s.close()


def test_a_read_only_data_dir_gives_a_clear_error(tmp_path):
    with small_disk(tmp_path) as disk:
        s, _, _ = reopen(disk / "node")
        s.append((1, None), entries(1, 5))
        s.close()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        for data_dir in (disk / "node", disk / "new"):
            with pytest.raises(StorageError, match="Read-only file system"):
                Storage(str(data_dir)).load()


def test_stale_snapshot_temp_files_are_removed_at_start(tmp_path):
    s, _, _ = reopen(tmp_path)
    s.append((1, None), entries(1, 5))
    s.close()
    stale = os.path.join(tmp_path, "snap", f"snap-{4:020d}.json.tmp")  # a crash before the rename
    with open(stale, "wb") as f:
        f.write(b'{"meta":{"index":4')
    s, state, log = reopen(tmp_path)
    assert not os.path.exists(stale) and state is None and len(log) == 5
    s.close()


class FailingSyncs(FileSystem):
    """The real file system, except that fsync of a log segment fails while `failing` is set."""

    def __init__(self):
        self.failing = False

    def open_append(self, path):
        real, fs = super().open_append(path), self

        class Segment:
            write, close = real.write, real.close

            def sync(self):
                if fs.failing:
                    raise OSError(errno.EIO, os.strerror(errno.EIO))
                real.sync()

        return Segment()


def test_a_failed_fsync_fails_this_and_every_later_append(tmp_path):
    """After a failed fsync the kernel may have dropped the data: the log is in doubt and the
    process must stop, not retry and carry on."""
    fs = FailingSyncs()
    s, _, _ = reopen(tmp_path, fs=fs)
    s.append((1, None), entries(1, 3))
    fs.failing = True
    with pytest.raises(StorageError, match="Input/output error"):
        s.append((2, None), entries(4, 4))
    fs.failing = False
    with pytest.raises(StorageError, match="not writable"):
        s.append(None, entries(4, 4))
    assert s.hard_state == (1, None)
    s.close()


def test_new_directories_are_fsynced_in_their_parents(tmp_path, monkeypatch):
    """Issue 9 item 18: a new directory's entry is durable only once its parent is fsynced."""
    synced = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    data_dir = tmp_path / "a" / "b"
    Storage(str(data_dir)).close()
    for parent in (tmp_path, tmp_path / "a", data_dir):
        assert str(parent) in synced


def test_recovery_makes_durable_what_it_read_before_the_node_relies_on_it():
    """Found by the simulator: a process that crashed before its fsync leaves the entry in the
    page cache; the restarted node loads it (and may acknowledge it to a leader), so a later power
    loss must not take it back. Several seeds, because a power loss keeps an unsynced tail whole,
    torn or not at all at random."""
    from fault_fs import Crash, FaultFS
    for seed in range(20):
        fs = FaultFS(seed)
        storage = Storage("/d", fs=fs)
        storage.load()
        storage.append((1, None), [(1, 1, {"op": "noop"})])
        fs.arm_crash(2)  # the write of entry 2 reaches the page cache, its fsync crashes
        with pytest.raises(Crash):
            storage.append(None, [(2, 1, {"op": "set", "key": "k", "value": seed})])
        fs.reboot(power_loss=False)
        _, entries = Storage("/d", fs=fs).load()
        assert [e[1] for e in entries] == [{"op": "noop"}, {"op": "set", "key": "k", "value": seed}]
        fs.reboot(power_loss=True)
        _, entries = Storage("/d", fs=fs).load()
        assert len(entries) == 2, f"seed {seed}: a power loss took back an entry the node had loaded"


@pytest.mark.parametrize("damage", ["segments deleted", "wal directory deleted"])
def test_a_snapshot_without_any_wal_segment_refuses_to_start(tmp_path, damage):
    """Without a segment the term and vote are gone, and a node that forgot its vote can vote
    twice in one term; no code path leaves a snapshot without a segment, so this is damage."""
    import shutil
    d = str(tmp_path / "node")
    s = Storage(d)
    s.load()
    s.append((7, "n2"), [(i, 7, {"op": "noop"}) for i in range(1, 6)])
    s.save_snapshot(5, 7, {"tasks": {}, "kv": {}})
    s.compact(5)
    s.close()
    wal = os.path.join(d, "wal")
    if damage == "segments deleted":
        for name in os.listdir(wal):
            os.remove(os.path.join(wal, name))
    else:
        shutil.rmtree(wal)
    with pytest.raises(StorageError, match="term and vote are lost"):
        Storage(d).load()


def test_close_waits_for_a_snapshot_being_written(tmp_path):
    """Another process may lock the directory once close() returns: a background snapshot must
    not still be writing into it."""
    import threading
    entered, release = threading.Event(), threading.Event()

    class SlowFileSystem(FileSystem):
        def write_file(self, path, data):
            entered.set()
            release.wait(10)
            super().write_file(path, data)

    d = str(tmp_path / "node")
    s = Storage(d, fs=SlowFileSystem())
    s.load()
    s.append((1, "a"), [(i, 1, {"op": "noop"}) for i in range(1, 4)])
    writer = threading.Thread(target=s.save_snapshot, args=(3, 1, {"tasks": {}, "kv": {}}))
    writer.start()
    assert entered.wait(10)
    closer = threading.Thread(target=s.close)
    closer.start()
    closer.join(0.5)
    assert closer.is_alive(), "close() returned while the snapshot was still being written"
    release.set()
    writer.join(10)
    closer.join(10)
    reopened = Storage(d)
    reopened.load()
    assert reopened.snapshot_meta["index"] == 3
    reopened.close()


def test_snapshot_meta_keeps_the_configuration(tmp_path):
    """The configuration at a snapshot's index travels in its meta (the log before it is gone)."""
    members = [{"id": "a", "url": "http://a:1", "role": "voter"}, {"id": "b", "url": "http://b:1", "role": "learner"}]
    s = Storage(str(tmp_path))
    s.load()
    s.append((1, None), [(1, 1, {"op": "noop"})])
    s.save_snapshot(1, 1, {"tasks": {}, "kv": {}}, members=members)
    s.close()
    s = Storage(str(tmp_path))
    s.load()
    assert s.snapshot_meta["members"] == members
    meta, body = s.snapshot_bytes()
    assert decode_snapshot(body)[0]["members"] == members
    s.close()


def test_cluster_file_is_written_atomically_and_read_back(tmp_path):
    s = Storage(str(tmp_path))
    assert s.load_cluster() is None
    info = {"cluster_id": "0123456789abcdef", "members": [{"id": "a", "url": "http://a:1", "role": "voter"}]}
    s.save_cluster(info)
    assert s.load_cluster() == info
    assert sorted(os.listdir(tmp_path)) == ["LOCK", "cluster.json", "snap", "wal"]  # no temp file left
    s.close()


@pytest.mark.parametrize("content", [b"not json", b"[]", b'{"cluster_id": 5}', b'{"cluster_id": "x", "members": 1}'])
def test_a_damaged_cluster_file_stops_the_node(tmp_path, content):
    (tmp_path / "cluster.json").write_bytes(content)
    s = Storage(str(tmp_path))
    with pytest.raises(StorageError, match="cluster.json"):
        s.load_cluster()
    s.close()
