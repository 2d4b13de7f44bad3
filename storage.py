"""Durable storage for one node: a write-ahead log plus checksummed pickledb snapshots.

Layout of a data directory:
    LOCK                             flock()ed while a process owns the directory
    cluster.json                     the cluster's id and the bootstrap configuration (see save_cluster)
    wal/<seq:010d>.wal               log segments; records are [u32 length][u32 crc32][orjson payload]
    snap/snap-<index:020d>.json      snapshots (see encode_snapshot), files pickledb 1.6 loads
    snap/snap-<index:020d>.json.tmp  a snapshot being written; garbage once a process restarts

WAL payloads are {"hs": [term, vote]} (hard state) or {"es": [[index, term, command], ...]} with
consecutive indexes. An entries record starting at index i replaces everything from i on: that is
how a follower's conflict truncation is recorded without rewriting files, and it applies below the
snapshot index too (such a cut still removes the entries after the snapshot). Each segment starts
with the hard state current when it was created, so dropping old segments never loses it.
Compaction drops only a prefix of segments, so segment numbers are contiguous, and segment 0 is
gone only when a snapshot covers it.

Recovery never guesses. A segment is fsynced before the next one is created, so only the final
record of the last segment can be torn by a crash. A bad record at byte p of the last segment is
torn, and cut, only when no intact record (one that passes its CRC) starts after p, and
  - fewer than 8 bytes are left at p (a partial header), or
  - its body runs past the end of the file and the bytes that are there fail its CRC (a partial
    body; if they passed, its length field was damaged), or
  - every byte from a point inside it to the end of the file is zero (the file grew but the data
    never reached the disk; a record always ends in "}", so a few flipped bits cannot do this).
Anything else is corruption: any other bad record, a bad record in an earlier segment, a missing
segment, a gap in the indexes, a log that does not reach back to the snapshot, a snapshot that
fails its checksum, or a missing snapshot under a compacted log. load() then raises StorageError
naming the file and byte offset, and changes nothing on disk.

A snapshot's meta carries `wal_floor`: segments numbered below it are superseded (an installed
snapshot replaces the whole log, including uncommitted entries after it). Snapshots are written to
a temp file, fsynced, renamed and the directory fsynced before anything older is deleted.

Every file operation goes through a FileSystem, so tests can substitute one that injects faults.
"""
from __future__ import annotations

import fcntl
import hashlib
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
SEGMENT_NAME = re.compile(r"(\d{10})\.wal")
SNAPSHOT_NAME = re.compile(r"snap-(\d{20})\.json")
TEMP_SUFFIX = ".tmp"
CLUSTER_FILE = "cluster.json"
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


def describe(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{reason} ({exc.filename})" if exc.filename else reason


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


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def sync_file(self, path: str) -> None:
        _fsync_path(path)

    def sync_dir(self, path: str) -> None:
        _fsync_path(path)

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


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_record(payload) -> tuple[str, object]:
    """("hs", (term, vote)) or ("es", [(index, term, command), ...]); ValueError if malformed."""
    if isinstance(payload, dict) and len(payload) == 1:
        if "hs" in payload:
            hs = payload["hs"]
            if (isinstance(hs, list) and len(hs) == 2 and _is_count(hs[0])
                    and (hs[1] is None or isinstance(hs[1], str))):
                return "hs", (hs[0], hs[1])
        elif "es" in payload:
            es = payload["es"]
            if (isinstance(es, list) and es and all(isinstance(e, list) and len(e) == 3 for e in es)
                    and all(_is_count(e[0]) and e[0] > 0 and _is_count(e[1]) for e in es)):
                if any(e[0] != es[0][0] + k for k, e in enumerate(es)):
                    raise ValueError("entry indexes are not consecutive")
                return "es", [tuple(e) for e in es]
    raise ValueError("not a hard state or entries record")


def _corrupt(path: str, pos: int, problem: str) -> StorageError:
    return StorageError(f"WAL segment {path} is corrupt at byte {pos} ({problem}); "
                        "refusing to start (nothing was changed)")


def _intact_record_after(data: bytes, pos: int) -> bool:
    """Whether a record passing its CRC starts anywhere after byte `pos` (found by its body's start)."""
    for marker in (b'{"hs":', b'{"es":'):
        body = data.find(marker, pos + 1 + HEADER.size)
        while body != -1:
            length, crc = HEADER.unpack_from(data, body - HEADER.size)
            if body + length <= len(data) and zlib.crc32(data[body:body + length]) == crc:
                return True
            body = data.find(marker, body + 1)
    return False


def _torn(data: bytes, pos: int) -> bool:
    """Whether the bad record at byte `pos` of the last segment is an unfinished write (module doc)."""
    if _intact_record_after(data, pos):
        return False
    if pos + HEADER.size > len(data):
        return True
    length, crc = HEADER.unpack_from(data, pos)
    end = pos + HEADER.size + length
    if end > len(data):
        return zlib.crc32(data[pos + HEADER.size:]) != crc
    return len(data.rstrip(b"\0")) < end


# A snapshot file is the JSON object {"meta": {...}, "state": {...}, "sha256": "<hex>"} where the
# digest covers every byte before `,"sha256"`; orjson writes "meta" and "state" first, so the file
# is one pickledb-loadable document and verifying it needs no re-encoding. SHA-256 rather than a
# CRC: a snapshot is one large blob, read once at start-up or received once over the network,
# hashed at about 1 GB/s (far below the cost of encoding it), and at any size a corruption that
# passes the check is out of the question.
_SUM_KEY = b',"sha256":"'
_TRAILER_SIZE = len(_SUM_KEY) + 64 + len(b'"}')


def encode_snapshot(meta: dict, state: dict) -> bytes:
    body = memoryview(orjson.dumps({"meta": meta, "state": state}))[:-1]  # no copy of a large state
    return b"".join((body, _SUM_KEY, hashlib.sha256(body).hexdigest().encode(), b'"}'))


def _check_snapshot(document) -> tuple[dict, dict]:
    if not isinstance(document, dict) or set(document) != {"meta", "state"}:
        raise StorageError("snapshot is not a {meta, state} document")
    meta, state = document["meta"], document["state"]
    counts = {"index", "term", "wal_floor"}
    # "members" (the configuration at the snapshot's index) is absent from earlier versions' files.
    if (not isinstance(meta, dict) or not counts <= set(meta) <= counts | {"members"}
            or not all(_is_count(meta[k]) for k in counts)
            or not isinstance(meta.get("members", []), list)):
        raise StorageError("snapshot meta is malformed")
    if not isinstance(state, dict):
        raise StorageError("snapshot state is not an object")
    return meta, state


def decode_snapshot(data: bytes) -> tuple[dict, dict]:
    """(meta, state) of a snapshot file's bytes, verified against its checksum; StorageError if not."""
    body, trailer = data[:-_TRAILER_SIZE], data[-_TRAILER_SIZE:]
    if len(data) < _TRAILER_SIZE or not trailer.startswith(_SUM_KEY) or not trailer.endswith(b'"}'):
        raise StorageError("snapshot has no checksum trailer (truncated or not a snapshot)")
    if hashlib.sha256(body).hexdigest().encode() != trailer[len(_SUM_KEY):-2]:
        raise StorageError("snapshot checksum mismatch")
    try:
        document = orjson.loads(body + b"}")
    except orjson.JSONDecodeError as exc:
        raise StorageError(f"snapshot is not valid JSON: {exc}") from None
    return _check_snapshot(document)


def _has_checksum(data: bytes) -> bool:
    return data.endswith(b'"}') and _SUM_KEY in data[-_TRAILER_SIZE:]


def _decode_local_snapshot(data: bytes) -> tuple[dict, dict]:
    """decode_snapshot, also accepting the unchecksummed files of earlier versions (exactly the keys
    meta and state: a damaged checksummed file never parses as one)."""
    if _has_checksum(data):
        return decode_snapshot(data)
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return decode_snapshot(data)  # reports the missing trailer
    meta, state = _check_snapshot(document)
    log.warning("snapshot at %d has no checksum (written by an earlier version)", meta["index"])
    return meta, state


class Storage:
    def __init__(self, data_dir: str, fs: FileSystem | None = None, segment_bytes: int = SEGMENT_BYTES):
        self.fs = fs or FileSystem()
        self.segment_bytes = segment_bytes
        self.dir = data_dir
        self.wal_dir = os.path.join(data_dir, "wal")
        self.snap_dir = os.path.join(data_dir, "snap")
        try:
            self.fs.makedirs(data_dir)
            self._lock = self.fs.lock(os.path.join(data_dir, "LOCK"))
        except OSError as exc:
            raise StorageError(f"cannot use data directory {data_dir}: {describe(exc)}") from None
        try:
            self.fs.makedirs(self.wal_dir)
            self.fs.makedirs(self.snap_dir)
        except OSError as exc:
            self.fs.unlock(self._lock)
            raise StorageError(f"cannot use data directory {data_dir}: {describe(exc)}") from None
        self._snap_lock = threading.Lock()
        self._segment: AppendFile | None = None  # the current segment
        self._segment_seq = 0
        self._segment_size = 0
        self._segment_max: dict[int, int] = {}  # segment seq -> highest entry index in it (0: none)
        self._failed: str | None = None  # why the log can no longer be written
        self.hard_state: tuple[int, str | None] = (0, None)
        self.snapshot_meta = {"index": 0, "term": 0, "wal_floor": 0}

    # ------------------------------------------------------------- start-up
    def load(self):
        """Returns (snapshot_state or None, entries after the snapshot as [(term, cmd)]).

        Verifies everything before changing anything; on any doubt raises StorageError (and
        releases the directory) instead of starting from a log that may lack durable entries."""
        try:
            # A crashed process's unsynced writes (and directory entries) are still in the page
            # cache, and recovery reads them: make them durable before anything relies on them,
            # or a later power loss takes back entries this node has since acknowledged.
            for path in (os.path.dirname(os.path.abspath(self.dir)), self.dir, self.wal_dir, self.snap_dir):
                self.fs.sync_dir(path)
            state, entries, tail = self._recover()
            self._finish_recovery(tail)
        except OSError as exc:
            self.close()
            raise StorageError(f"cannot recover data directory {self.dir}: {describe(exc)}") from None
        except StorageError:
            self.close()
            raise
        return state, entries

    def _recover(self):
        """Read and check the newest snapshot and the log; returns (state, entries, tail) where
        tail is (seq, end of the good records, size) of the last segment, or None. Changes nothing
        (it only fsyncs what it reads)."""
        snap_indexes = self._snapshots()
        state = None
        if snap_indexes:
            path = self._snap_path(snap_indexes[0])
            try:
                self.fs.sync_file(path)
                meta, state = _decode_local_snapshot(self.fs.read(path))
            except StorageError as exc:
                raise StorageError(f"snapshot {path} is corrupt ({exc}); refusing to start: "
                                   "restore the file or rebuild this node's data") from None
            if meta["index"] != snap_indexes[0]:
                raise StorageError(f"snapshot {path} says it is at index {meta['index']}; refusing to start")
            self.snapshot_meta = meta
        snap_index, floor = self.snapshot_meta["index"], self.snapshot_meta["wal_floor"]
        segments = [s for s in self._segments() if s >= floor]
        if state is not None and not segments:
            # Compaction keeps the current segment and an install creates the floor segment
            # before the snapshot names it: without one, the term and vote are gone.
            raise StorageError(f"snapshot {self._snap_path(snap_indexes[0])} has no WAL segment from "
                               f"{self._segment_path(floor)} on (the term and vote are lost); refusing to start")
        if segments and state is None and segments[0] != 0:
            raise StorageError(f"WAL in {self.wal_dir} starts at segment {segments[0]} (older ones were "
                               "compacted into a snapshot) but there is no snapshot; refusing to start")
        for seq, following in zip(segments, segments[1:]):
            if following != seq + 1:
                raise StorageError(f"WAL segment {self._segment_path(seq + 1)} is missing; refusing to start")

        entries: list[tuple[int, object]] = []
        last = None  # index of the last log entry so far (None: no entries record yet)
        snap_entry = None  # (term, path, offset) of the entry at snap_index, as last written
        tail = None
        for n, seq in enumerate(segments):
            path = self._segment_path(seq)
            self.fs.sync_file(path)
            data = self.fs.read(path)
            pos, highest = 0, 0
            while pos < len(data):
                problem, end = None, pos + HEADER.size
                if end > len(data):
                    problem = "partial record header"
                else:
                    length, crc = HEADER.unpack_from(data, pos)
                    end += length
                    if end > len(data):
                        problem = "record runs past the end of the file"
                    elif zlib.crc32(data[pos + HEADER.size:end]) != crc:
                        problem = "checksum mismatch"
                    else:
                        try:
                            kind, value = parse_record(orjson.loads(data[pos + HEADER.size:end]))
                        except ValueError as exc:  # orjson's decode error is a ValueError too
                            problem = f"bad record: {exc}"
                if problem:
                    if n == len(segments) - 1 and _torn(data, pos):
                        break
                    raise _corrupt(path, pos, problem)
                if kind == "hs":
                    self.hard_state = value
                else:
                    first = value[0][0]
                    if last is None and first > snap_index + 1:
                        raise _corrupt(path, pos, f"the log starts at index {first} but the snapshot ends "
                                                  f"at {snap_index}: the entries in between are missing")
                    if last is not None and first > last + 1:
                        raise _corrupt(path, pos, f"entry {first} follows entry {last}")
                    # A record starting at `first` replaces the log from there on, also when
                    # `first` is at or below the snapshot: then every entry after it is cut.
                    del entries[max(0, first - snap_index - 1):]
                    if first <= snap_index:
                        snap_entry = None
                    for index, term, command in value:
                        if index > snap_index:
                            entries.append((term, command))
                        elif index == snap_index:
                            snap_entry = (term, path, pos)
                    last = value[-1][0]
                    highest = max(highest, last)
                pos = end
            self._segment_max[seq] = highest
            tail = (seq, pos, len(data))  # the last segment: where its good records end, its size
        if last is not None and last < snap_index:
            raise StorageError(f"WAL in {self.wal_dir} cuts the log at index {last}, below the snapshot "
                               f"at {snap_index}; refusing to start")
        if snap_entry is not None and snap_entry[0] != self.snapshot_meta["term"]:
            raise _corrupt(snap_entry[1], snap_entry[2], f"entry {snap_index} has term {snap_entry[0]}, "
                                                         f"the snapshot says {self.snapshot_meta['term']}")
        return state, entries, tail

    def _finish_recovery(self, tail) -> None:
        """The only changes recovery makes, once everything checked out: drop what is provably
        garbage and cut a torn tail, then open the last segment for appending."""
        floor = self.snapshot_meta["wal_floor"]
        superseded = [s for s in self._segments() if s < floor]  # covered by the verified snapshot
        for seq in superseded:
            self.fs.remove(self._segment_path(seq))
        if superseded:
            self.fs.sync_dir(self.wal_dir)
        temps = [n for n in self.fs.listdir(self.snap_dir) if n.endswith(TEMP_SUFFIX)]
        for name in temps:  # a snapshot write that never reached its rename
            self.fs.remove(os.path.join(self.snap_dir, name))
        if temps:
            self.fs.sync_dir(self.snap_dir)
        if tail is None:
            self._open_segment(floor)
            return
        seq, size, found = tail
        path = self._segment_path(seq)
        if size < found:
            log.warning("WAL segment %s: cutting a torn tail at byte %d of %d", path, size, found)
            self.fs.truncate(path, size)
        self._segment = self.fs.open_append(path)
        self._segment_seq, self._segment_size = seq, size
        if size == 0:  # a segment starts with the hard state
            self._write(encode_record({"hs": list(self.hard_state)}))

    def _segments(self) -> list[int]:
        return sorted(int(m.group(1)) for m in map(SEGMENT_NAME.fullmatch, self.fs.listdir(self.wal_dir)) if m)

    def _segment_path(self, seq: int) -> str:
        return os.path.join(self.wal_dir, f"{seq:010d}.wal")

    def _open_segment(self, seq: int) -> None:
        """Start segment `seq` with the current hard state; a failed start leaves no file behind."""
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        path = self._segment_path(seq)
        try:
            self._segment = self.fs.open_append(path)
            self._segment_seq, self._segment_size = seq, 0
            self._segment_max.setdefault(seq, 0)
            self._write(encode_record({"hs": list(self.hard_state)}))
            self.fs.sync_dir(self.wal_dir)
        except (OSError, StorageError) as exc:
            if self._segment is not None:
                self._segment.close()
                self._segment = None
            self._segment_max.pop(seq, None)
            try:
                if self.fs.exists(path):
                    self.fs.remove(path)
            except OSError:
                pass  # the error below is what matters; an hs-only segment is harmless
            if isinstance(exc, OSError):
                self._failed = f"cannot start WAL segment {path}: {describe(exc)}"
                raise StorageError(self._failed) from None
            raise

    def _write(self, data: bytes, point: str | None = None) -> None:
        """Append to the current segment and fsync (passing crash point `point` in between). After
        a failure the log is in doubt (a failed fsync may have dropped the data), so every later
        write fails too."""
        if self._failed:
            raise StorageError(f"the WAL is not writable: {self._failed}")
        try:
            self._segment.write(data)
            if point:
                crash_point(point)
            self._segment.sync()
        except OSError as exc:
            self._failed = f"cannot write WAL segment {self._segment_path(self._segment_seq)}: {describe(exc)}"
            raise StorageError(self._failed) from None
        self._segment_size += len(data)

    # ------------------------------------------------------------- the log
    def append(self, hard_state, entries) -> None:
        """Append a hard state change and/or entries [(index, term, command)], then fsync once.
        Raises StorageError if the disk refuses (full, failing): the process must stop."""
        buf = bytearray()
        if hard_state is not None:
            buf += encode_record({"hs": list(hard_state)})
        if entries:
            buf += encode_record({"es": [list(e) for e in entries]})
        if not buf:
            return
        self._write(bytes(buf), "wal_before_fsync")
        if hard_state is not None:
            self.hard_state = hard_state
        if entries:
            seg = self._segment_seq
            self._segment_max[seg] = max(self._segment_max.get(seg, 0), entries[-1][0])
        if self._segment_size >= self.segment_bytes:
            self._open_segment(self._segment_seq + 1)

    def compact(self, index: int) -> None:
        """Drop the oldest segments made redundant by a durable snapshot at `index`. Only a prefix
        goes (a later segment can hold only old indexes after a truncation), so that segment
        numbers stay contiguous and a missing one always means damage."""
        current_max = self._segment_max.get(self._segment_seq, 0)
        if 0 < current_max <= index:
            self._open_segment(self._segment_seq + 1)
        crash_point("snapshot_before_truncate")
        try:
            for seq in sorted(self._segment_max):
                if seq == self._segment_seq or self._segment_max[seq] > index:
                    break
                self.fs.remove(self._segment_path(seq))
                # One at a time and durably: POSIX does not order unsynced directory changes,
                # and a later segment gone while an earlier one came back would read as damage.
                self.fs.sync_dir(self.wal_dir)
                del self._segment_max[seq]
        except OSError as exc:
            raise StorageError(f"cannot remove a compacted WAL segment: {describe(exc)}") from None

    # ------------------------------------------------------------- snapshots
    def _snap_path(self, index: int) -> str:
        return os.path.join(self.snap_dir, f"snap-{index:020d}.json")

    def _snapshots(self) -> list[int]:
        """Indexes of the snapshot files, newest first."""
        return sorted((int(m.group(1)) for m in map(SNAPSHOT_NAME.fullmatch, self.fs.listdir(self.snap_dir))
                       if m), reverse=True)

    def save_snapshot(self, index: int, term: int, state: dict, installed: bool = False,
                      members: list[dict] | None = None) -> None:
        """Write a snapshot durably, then delete older snapshots. With `installed` (the leader
        sent it), the log written so far is superseded: a fresh segment becomes the floor.
        `members` is the configuration in effect at `index`, kept in the meta.
        Raises StorageError if the disk refuses; a failed write leaves no temp file."""
        with self._snap_lock:
            if index <= self.snapshot_meta["index"]:
                if installed:  # the core dropped its log for it: the WAL must not outlive that
                    raise StorageError(f"installed snapshot at {index} is not newer than the one at "
                                       f"{self.snapshot_meta['index']}")
                return
            floor = self.snapshot_meta["wal_floor"]
            if installed:
                self._open_segment(self._segment_seq + 1)
                floor = self._segment_seq
            meta = {"index": index, "term": term, "wal_floor": floor}
            if members is not None:
                meta["members"] = members
            path = self._snap_path(index)
            temp = path + TEMP_SUFFIX
            try:
                self.fs.write_file(temp, encode_snapshot(meta, state))
                crash_point("snapshot_before_rename")
                self.fs.rename(temp, path)
                self.fs.sync_dir(self.snap_dir)
            except OSError as exc:
                try:
                    if self.fs.exists(temp):
                        self.fs.remove(temp)
                except OSError:
                    pass  # removed at the next start
                raise StorageError(f"cannot write snapshot {path}: {describe(exc)}") from None
            self.snapshot_meta = meta
            try:
                if installed:
                    for seq in sorted(s for s in self._segment_max if s < floor):
                        self.fs.remove(self._segment_path(seq))
                        del self._segment_max[seq]
                for older in self._snapshots():
                    if older < index:
                        self.fs.remove(self._snap_path(older))
            except OSError as exc:
                raise StorageError(f"cannot remove data superseded by snapshot {path}: {describe(exc)}") from None

    def snapshot_bytes(self) -> tuple[dict, bytes]:
        """The newest durable snapshot's meta and raw file, for sending to a lagging follower."""
        with self._snap_lock:
            meta = dict(self.snapshot_meta)
            data = self.fs.read(self._snap_path(meta["index"]))
        if not _has_checksum(data):  # written by an earlier version: receivers require one
            data = encode_snapshot(*_decode_local_snapshot(data))
        return meta, data

    # ------------------------------------------------------------- cluster identity
    def load_cluster(self) -> dict | None:
        """cluster.json: {"cluster_id": str, "members": [...]} (the bootstrap configuration), or
        None when the node has not joined or bootstrapped a cluster yet."""
        path = os.path.join(self.dir, CLUSTER_FILE)
        try:
            if not self.fs.exists(path):
                return None
            info = orjson.loads(self.fs.read(path))
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {describe(exc)}") from None
        except orjson.JSONDecodeError as exc:
            raise StorageError(f"{path} is not valid JSON: {exc}") from None
        if not (isinstance(info, dict) and isinstance(info.get("cluster_id"), str) and info["cluster_id"]
                and isinstance(info.get("members", []), list)):
            raise StorageError(f"{path} is malformed: needs a cluster_id string and a members list")
        return info

    def save_cluster(self, info: dict) -> None:
        """Write cluster.json atomically and durably (temp file, fsync, rename, fsync the directory)."""
        path = os.path.join(self.dir, CLUSTER_FILE)
        temp = path + TEMP_SUFFIX
        try:
            self.fs.write_file(temp, orjson.dumps(info))
            self.fs.rename(temp, path)
            self.fs.sync_dir(self.dir)
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {describe(exc)}") from None

    def close(self) -> None:
        with self._snap_lock:  # a background snapshot finishes before another process may lock
            self._close()

    def _close(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None
        if self._lock is not None:
            self.fs.unlock(self._lock)
            self._lock = None
