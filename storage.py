"""Durable storage for one node: a write-ahead log plus pickledb snapshots.

Layout of a data directory:
    LOCK                         flock()ed while a process owns the directory
    wal/<seq:010d>.wal           log segments; records are [u32 length][u32 crc32][orjson payload]
    snap/snap-<index:020d>.json  pickledb files {"meta": {...}, "state": {...}}, written by this
                                 module with orjson (byte-compatible with pickledb 1.6)

WAL payloads are {"hs": [term, vote]} (hard state) or {"es": [[index, term, command], ...]}.
A later entry at an index overrides earlier ones (that is how a follower's conflict
truncation is recorded without rewriting files). Each segment starts with the current
hard state, so dropping old segments never loses it.

A snapshot's meta carries `wal_floor`: segments numbered below it are superseded (an
installed snapshot replaces the whole log, including uncommitted entries after it).
Snapshots are fsynced (file and directory) before anything older is deleted.

Every file operation goes through a FileSystem, so tests can substitute one that injects faults.
"""
from __future__ import annotations

import fcntl
import logging
import os
import re
import struct
import threading
import zlib

import orjson

log = logging.getLogger("pickledb_cluster.storage")

HEADER = struct.Struct("<II")
SEGMENT_BYTES = 64 * 1024 * 1024
_crash_hits: dict[str, int] = {}


class StorageError(Exception):
    pass


def crash_point(name: str) -> None:
    """Test-only fault hook: PICKLEDB_CRASH_POINT=name[:n] exits hard at the n-th hit."""
    spec = os.environ.get("PICKLEDB_CRASH_POINT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _crash_hits[name] = _crash_hits.get(name, 0) + 1
    if _crash_hits[name] >= int(nth or 1):
        log.error("crash point %s reached: exiting", name)
        os._exit(137)


class AppendFile:
    """An open log segment: unbuffered appends, durable after sync()."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


class FileSystem:
    """Every file operation Storage makes. The real one calls the OS; tests substitute a
    fault-injecting one (torn writes, lost unsynced writes, crashes)."""

    def makedirs(self, path: str) -> None:
        """Create `path` and missing parents; each new directory's entry is fsynced in its parent."""
        path = os.path.abspath(path)
        if os.path.isdir(path):
            return
        self.makedirs(os.path.dirname(path))
        try:
            os.mkdir(path)
        except FileExistsError:
            return
        self.sync_dir(os.path.dirname(path))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def read(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_append(self, path: str) -> AppendFile:
        return AppendFile(path)

    def write_file(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def truncate(self, path: str, size: int) -> None:
        with open(path, "r+b") as f:
            f.truncate(size)
            os.fsync(f.fileno())

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def sync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, path: str) -> object:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise StorageError(f"data directory {os.path.dirname(path)} is in use by another process")
        return handle

    def unlock(self, handle: object) -> None:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def encode_record(payload: dict) -> bytes:
    body = orjson.dumps(payload)
    return HEADER.pack(len(body), zlib.crc32(body)) + body


def read_records(data: bytes):
    """Yield (payload, end_offset) for each valid record; stop at the first torn or corrupt one."""
    pos = 0
    while pos + HEADER.size <= len(data):
        length, crc = HEADER.unpack_from(data, pos)
        start, end = pos + HEADER.size, pos + HEADER.size + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            return
        try:
            payload = orjson.loads(data[start:end])
        except orjson.JSONDecodeError:
            return
        yield payload, end
        pos = end


class Storage:
    def __init__(self, data_dir: str, fs: FileSystem | None = None, segment_bytes: int = SEGMENT_BYTES):
        self.fs = fs or FileSystem()
        self.segment_bytes = segment_bytes
        self.dir = data_dir
        self.wal_dir = os.path.join(data_dir, "wal")
        self.snap_dir = os.path.join(data_dir, "snap")
        self.fs.makedirs(self.wal_dir)
        self.fs.makedirs(self.snap_dir)
        self._lock = self.fs.lock(os.path.join(data_dir, "LOCK"))
        self._snap_lock = threading.Lock()
        self._segment: AppendFile | None = None  # the current segment
        self._segment_seq = 0
        self._segment_size = 0
        self._segment_max: dict[int, int] = {}  # segment seq -> highest entry index in it
        self.hard_state: tuple[int, str | None] = (0, None)
        self.snapshot_meta = {"index": 0, "term": 0, "wal_floor": 0}

    # ------------------------------------------------------------- start-up
    def load(self):
        """Returns (snapshot_state or None, entries after the snapshot as [(term, cmd)])."""
        state = self._load_newest_snapshot()
        floor = self.snapshot_meta["wal_floor"]
        snap_index = self.snapshot_meta["index"]
        entries: list[tuple[int, object]] = []
        segments = self._segments()
        for seq in [s for s in segments if s < floor]:
            self.fs.remove(self._segment_path(seq))  # superseded by an installed snapshot
        segments = [s for s in segments if s >= floor]
        for n, seq in enumerate(segments):
            path = self._segment_path(seq)
            data = self.fs.read(path)
            good_end, max_index, broken = 0, 0, False
            for payload, end in read_records(data):
                if "hs" in payload:
                    self.hard_state = (payload["hs"][0], payload["hs"][1])
                for index, term, command in payload.get("es", ()):
                    max_index = max(max_index, index)
                    if index <= snap_index:
                        continue
                    if index > snap_index + len(entries) + 1:
                        broken = True  # a gap: nothing after it can be trusted
                        break
                    del entries[index - snap_index - 1:]
                    entries.append((term, command))
                if broken:
                    break
                good_end = end
            self._segment_max[seq] = max_index
            if good_end < len(data) or broken:
                log.warning("WAL segment %s: cutting a torn or corrupt tail at byte %d of %d",
                            path, good_end, len(data))
                self.fs.truncate(path, good_end)
                for later in segments[n + 1:]:
                    log.warning("WAL segment %s follows a corrupt record: removed", later)
                    self.fs.remove(self._segment_path(later))
                    self._segment_max.pop(later, None)
                break
        self._open_segment(max(self._segments(), default=floor - 1) + 1)
        return state, entries

    def _segments(self) -> list[int]:
        return sorted(int(name[:-4]) for name in self.fs.listdir(self.wal_dir)
                      if re.fullmatch(r"\d{10}\.wal", name))

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, f"{seq:010d}.wal")

    def _open_segment(self, seq: int) -> None:
        if self._segment is not None:
            self._segment.close()
        self._segment = self.fs.open_append(self._segment_path(seq))
        self._segment_seq = seq
        self._segment_size = 0
        self._segment_max.setdefault(seq, 0)
        self._segment.write(encode_record({"hs": list(self.hard_state)}))
        self._segment.sync()
        self.fs.sync_dir(self.wal_dir)

    # ------------------------------------------------------------- the log
    def append(self, hard_state, entries) -> None:
        """Append a hard state change and/or entries [(index, term, command)], then fsync once."""
        buf = bytearray()
        if hard_state is not None:
            self.hard_state = hard_state
            buf += encode_record({"hs": list(hard_state)})
        if entries:
            buf += encode_record({"es": [list(e) for e in entries]})
            seg = self._segment_seq
            self._segment_max[seg] = max(self._segment_max.get(seg, 0), entries[-1][0])
        if not buf:
            return
        self._segment.write(buf)
        crash_point("wal_before_fsync")
        self._segment.sync()
        self._segment_size += len(buf)
        if self._segment_size >= self.segment_bytes:
            self._open_segment(self._segment_seq + 1)

    def compact(self, index: int) -> None:
        """Drop whole segments made redundant by a durable snapshot at `index`."""
        if self._segment_max.get(self._segment_seq, 0) <= index and self._segment_size > 0:
            self._open_segment(self._segment_seq + 1)
        crash_point("snapshot_before_truncate")
        for seq in sorted(self._segment_max):
            if seq != self._segment_seq and self._segment_max[seq] <= index:
                self.fs.remove(self._segment_path(seq))
                del self._segment_max[seq]

    # ------------------------------------------------------------- snapshots
    def _snap_path(self, index: int) -> str:
        return os.path.join(self.snap_dir, f"snap-{index:020d}.json")

    def _snapshots(self) -> list[int]:
        return sorted((int(m.group(1)) for m in (re.fullmatch(r"snap-(\d{20})\.json", n)
                                                  for n in self.fs.listdir(self.snap_dir)) if m), reverse=True)

    def _load_newest_snapshot(self):
        for index in self._snapshots():
            path = self._snap_path(index)
            try:
                snapshot = orjson.loads(self.fs.read(path))
                meta, state = snapshot["meta"], snapshot["state"]
                if meta["index"] != index:
                    raise ValueError("index mismatch")
            except Exception as exc:  # a torn snapshot: fall back to an older one
                log.warning("snapshot %s is unreadable (%s): ignored", path, exc)
                continue
            self.snapshot_meta = {"index": meta["index"], "term": meta["term"], "wal_floor": meta["wal_floor"]}
            return state
        return None

    def save_snapshot(self, index: int, term: int, state: dict, installed: bool = False) -> None:
        """Write a snapshot durably, then delete older snapshots. With `installed` (the leader
        sent it), the log written so far is superseded: a fresh segment becomes the floor."""
        with self._snap_lock:
            if index <= self.snapshot_meta["index"]:
                return
            floor = self.snapshot_meta["wal_floor"]
            if installed:
                self._open_segment(self._segment_seq + 1)
                floor = self._segment_seq
            path = self._snap_path(index)
            data = orjson.dumps({"meta": {"index": index, "term": term, "wal_floor": floor}, "state": state})
            self.fs.write_file(path + ".tmp", data)
            crash_point("snapshot_before_rename")
            self.fs.rename(path + ".tmp", path)
            self.fs.sync_dir(self.snap_dir)
            self.snapshot_meta = {"index": index, "term": term, "wal_floor": floor}
            if installed:
                for seq in [s for s in self._segment_max if s < floor]:
                    self.fs.remove(self._segment_path(seq))
                    del self._segment_max[seq]
            for older in self._snapshots():
                if older < index:
                    self.fs.remove(self._snap_path(older))

    def snapshot_bytes(self) -> tuple[dict, bytes]:
        """The newest durable snapshot's meta and raw file, for sending to a lagging follower."""
        with self._snap_lock:
            meta = dict(self.snapshot_meta)
            return meta, self.fs.read(self._snap_path(meta["index"]))

    def close(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        self.fs.unlock(self._lock)
