"""An in-memory file system with crash semantics, for driving storage.Storage in tests.

It implements storage.FileSystem. Each file has the content reads see and the content that is
durable (as of its last fsync); each directory has the entries reads see, the entries that are
durable (as of its last sync_dir), and the changes made since, in order. `reboot()` models a
power loss: every file keeps its unsynced tail whole, keeps a torn prefix of it or loses it, and
every directory keeps some prefix of its unsynced changes (create, rename, remove); a process
crash without power loss keeps everything. Renames within a directory are atomic; a rename
across directories is two independent changes (nothing here does one).

Faults are armed by operation count: every operation that changes something (a write, an fsync,
a create, a rename...) is a crash point, numbered from 1. At the armed one the operation raises
`Crash`, either before doing anything or halfway (some bytes written, nothing fsynced);
`ENOSPC` can be armed the same way for operations that allocate space.
"""
from __future__ import annotations

import copy
import errno
import posixpath
import random

from storage import StorageError


class Crash(BaseException):
    """The machine stopped here. A BaseException, so no `except Exception` in the code under
    test can swallow it and carry on as if the operation had happened."""


class _File:
    __slots__ = ("data", "durable")

    def __init__(self) -> None:
        self.data = b""  # what reads see
        self.durable = b""  # what survives a power loss


class _Dir:
    __slots__ = ("entries", "durable", "changes")

    def __init__(self) -> None:
        self.entries: dict[str, _File | _Dir] = {}
        self.durable: dict[str, _File | _Dir] = {}
        self.changes: list[dict[str, _File | _Dir | None]] = []  # since the last sync_dir; None = removed


class FaultAppendFile:
    def __init__(self, fs: "FaultFS", path: str, node: _File):
        self.fs, self.path, self.node, self.boot = fs, path, node, fs.boot
        self.closed = False

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"{self.path}: write to a closed file")
        if self.boot != self.fs.boot:
            raise RuntimeError(f"{self.path}: handle from before a reboot")

    def write(self, data: bytes) -> None:
        self._check()
        data = bytes(data)
        fault = self.fs._op(f"write {self.path} +{len(data)}", allocates=True)
        if fault is not None:  # torn: part of the bytes reached the page cache
            self.node.data += data[:self.fs.rng.randint(0, len(data))]
            fault()
        self.node.data += data

    def sync(self) -> None:
        self._check()
        self.fs._op(f"fsync {self.path}", halfway=False)
        self.node.durable = self.node.data

    def close(self) -> None:
        self.closed = True


class FaultFS:
    def __init__(self, seed: int | None = None):
        self.rng = random.Random(seed)
        self.root = _Dir()
        self.ops = 0  # crash points passed so far
        self.crash_at: int | None = None
        self.enospc_at: int | None = None
        self.crashed: str | None = None  # the operation that crashed, until reboot()
        self.boot = 0
        self.locks: set[str] = set()

    # ------------------------------------------------------------- fault control
    def arm_crash(self, after: int) -> None:
        """Crash at the `after`-th crash point from now (1 = the next one)."""
        self.crash_at = self.ops + after

    def arm_enospc(self, after: int) -> None:
        """Fail the first space-allocating operation at or after the `after`-th crash point from now."""
        self.enospc_at = self.ops + after

    def disarm(self) -> None:
        self.crash_at = self.enospc_at = None

    def reboot(self, power_loss: bool = True, rng: random.Random | None = None) -> None:
        """Come back after a crash. A process crash keeps the page cache: nothing is lost (and
        what was not fsynced is still not durable). A power loss applies crash semantics."""
        rng = rng or self.rng
        self.crashed = None
        self.crash_at = self.enospc_at = None
        self.locks.clear()
        self.boot += 1
        if power_loss:
            self._lose_power(self.root, rng, set())

    def _lose_power(self, d: _Dir, rng: random.Random, seen: set[int]) -> None:
        # POSIX promises no order among unsynced directory changes: any subset survives (each
        # change, such as a rename within the directory, is atomic; per name the last kept wins).
        entries = dict(d.durable)
        for change in d.changes:
            if rng.random() < 0.5:
                continue
            for name, node in change.items():
                if node is None:
                    entries.pop(name, None)
                else:
                    entries[name] = node
        d.entries, d.durable, d.changes = entries, dict(entries), []
        for node in entries.values():
            if id(node) in seen:
                continue
            seen.add(id(node))
            if isinstance(node, _Dir):
                self._lose_power(node, rng, seen)
            else:
                node.durable = node.data = self._surviving(node, rng)

    @staticmethod
    def _surviving(f: _File, rng: random.Random) -> bytes:
        if f.data == f.durable:
            return f.data
        common = 0  # the unsynced part starts after the longest common prefix
        limit = min(len(f.data), len(f.durable))
        while common < limit and f.data[common] == f.durable[common]:
            common += 1
        fate = rng.randrange(4)
        if fate == 0 or (common < len(f.durable) and rng.random() < 0.5):
            return f.durable  # lost (an unsynced truncate or rewrite is undone whole, or not)
        if fate == 1 and len(f.data) > common:
            return f.data[:rng.randint(common, len(f.data) - 1)]  # torn
        if fate == 2 and len(f.data) > len(f.durable) and f.data.startswith(f.durable):
            # The new size reached the disk, the data did not (ext4 data=writeback, XFS).
            return f.durable + bytes(rng.randint(1, len(f.data) - len(f.durable)))
        return f.data  # kept whole

    def clone(self) -> "FaultFS":
        """An independent copy of the current state (content and durability), without locks."""
        other = FaultFS()
        other.root = copy.deepcopy(self.root)
        return other

    def _op(self, what: str, allocates: bool = False, halfway: bool = True):
        """Count one crash point. Raises Crash or ENOSPC when armed; for an operation that can
        be interrupted halfway, may instead return a function that raises, to be called after
        doing the first half."""
        if self.crashed is not None:
            raise Crash(f"already crashed at {self.crashed}")
        self.ops += 1
        if self.crash_at is not None and self.ops >= self.crash_at:
            self.crash_at = None
            self.crashed = f"op {self.ops}: {what}"
            if halfway and self.rng.random() < 0.5:
                crashed = self.crashed

                def crash_halfway():
                    raise Crash(crashed + " (halfway)")
                return crash_halfway
            raise Crash(self.crashed)
        if allocates and self.enospc_at is not None and self.ops >= self.enospc_at:
            self.enospc_at = None
            text = f"{what}: No space left on device"

            def disk_full():
                raise OSError(errno.ENOSPC, text)
            return disk_full
        return None

    # ------------------------------------------------------------- paths
    def _split(self, path: str) -> list[str]:
        return [p for p in posixpath.normpath(posixpath.join("/", path)).split("/") if p]

    def _lookup(self, path: str):
        node = self.root
        for part in self._split(path):
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
            node = node.entries.get(part)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = self._split(path)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        parent = self._lookup("/" + "/".join(parts[:-1]))
        if not isinstance(parent, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return parent, parts[-1]

    def _file(self, path: str) -> _File:
        node = self._lookup(path)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return node

    @staticmethod
    def _change(d: _Dir, change: dict) -> None:
        for name, node in change.items():
            if node is None:
                d.entries.pop(name, None)
            else:
                d.entries[name] = node
        d.changes.append(change)

    def _alive(self) -> None:
        if self.crashed is not None:
            raise Crash(f"already crashed at {self.crashed}")

    # ------------------------------------------------------------- storage.FileSystem
    def makedirs(self, path: str) -> None:
        self._alive()
        node, parts = self.root, self._split(path)
        for i, part in enumerate(parts):
            child = node.entries.get(part)
            if child is None:
                fault = self._op(f"mkdir /{'/'.join(parts[:i + 1])}", allocates=True, halfway=False)
                if fault is not None:
                    fault()
                child = _Dir()
                self._change(node, {part: child})
                self._op(f"fsync dir /{'/'.join(parts[:i])}", halfway=False)
                node.durable, node.changes = dict(node.entries), []
            elif not isinstance(child, _Dir):
                raise FileExistsError(errno.EEXIST, "file exists", path)
            node = child

    def listdir(self, path: str) -> list[str]:
        self._alive()
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        return sorted(node.entries)

    def exists(self, path: str) -> bool:
        self._alive()
        try:
            self._lookup(path)
        except OSError:
            return False
        return True

    def read(self, path: str) -> bytes:
        self._alive()
        return self._file(path).data

    def open_append(self, path: str) -> FaultAppendFile:
        self._alive()
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            fault = self._op(f"create {path}", allocates=True, halfway=False)
            if fault is not None:
                fault()
            node = _File()
            self._change(parent, {name: node})
        elif isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        return FaultAppendFile(self, path, node)

    def write_file(self, path: str, data: bytes) -> None:
        self._alive()
        data = bytes(data)
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        fault = self._op(f"write_file {path} ({len(data)} bytes)", allocates=True)
        if node is None:
            node = _File()
            self._change(parent, {name: node})
        if fault is not None:  # truncated and partly written, not fsynced
            node.data = data[:self.rng.randint(0, len(data))]
            fault()
        node.data = data
        self._op(f"fsync {path}", halfway=False)
        node.durable = data

    def truncate(self, path: str, size: int) -> None:
        self._alive()
        node = self._file(path)
        fault = self._op(f"truncate {path} to {size}")
        new = node.data[:size] + b"\0" * max(0, size - len(node.data))
        if fault is not None:  # truncated, not fsynced
            node.data = new
            fault()
        node.data = new
        self._op(f"fsync {path}", halfway=False)
        node.durable = new

    def rename(self, src: str, dst: str) -> None:
        self._alive()
        sparent, sname = self._parent(src)
        dparent, dname = self._parent(dst)
        node = sparent.entries.get(sname)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", src)
        if isinstance(dparent.entries.get(dname), _Dir) or isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "renaming directories is not modelled", dst)
        self._op(f"rename {src} -> {dst}", halfway=False)
        if sparent is dparent:
            if sname != dname:
                self._change(sparent, {sname: None, dname: node})
        else:
            self._change(sparent, {sname: None})
            self._change(dparent, {dname: node})

    def remove(self, path: str) -> None:
        self._alive()
        parent, name = self._parent(path)
        node = parent.entries.get(name)
        if node is None:
            raise FileNotFoundError(errno.ENOENT, "no such file or directory", path)
        if isinstance(node, _Dir):
            raise IsADirectoryError(errno.EISDIR, "is a directory", path)
        self._op(f"remove {path}", halfway=False)
        self._change(parent, {name: None})

    def sync_file(self, path: str) -> None:
        self._alive()
        node = self._file(path)
        self._op(f"fsync {path}", halfway=False)
        node.durable = node.data

    def sync_dir(self, path: str) -> None:
        self._alive()
        node = self._lookup(path)
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
        self._op(f"fsync dir {path}", halfway=False)
        node.durable, node.changes = dict(node.entries), []

    def lock(self, path: str) -> object:
        self._alive()
        parent, name = self._parent(path)
        if name not in parent.entries:
            self._change(parent, {name: _File()})  # like open(path, "a+"); not a crash point
        if path in self.locks:
            raise StorageError(f"data directory {posixpath.dirname(path)} is in use by another process")
        self.locks.add(path)
        return path

    def unlock(self, handle: object) -> None:
        self._alive()
        self.locks.discard(handle)
