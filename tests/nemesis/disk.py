"""Disk faults on a stopped node: which bytes to damage, whether the node may start anyway,
and what a correct refusal looks like.

The damage is one flipped bit in a WAL segment or in the newest snapshot, or the newest
snapshot deleted. A stopped node's files were all written completely (kill -9 loses no
completed write(); SIGTERM shuts down cleanly), so a flipped bit damages a complete record
and the node must refuse to start. The only starts accepted are those a correct node cannot
tell from a recoverable state, each decided from the file's ORIGINAL bytes:

  * the bit lies in an incomplete final record of the last segment (a write torn by the
    kill): cutting it is the documented repair;
  * the bit lies in the length field of the last complete record of the last segment and
    makes that record reach past the end of the file: without a checksum over the header
    this is byte-for-byte a torn final write;
  * the snapshot is damaged or deleted but the WAL still holds the whole log, from index 1
    without a gap, or an older snapshot remains: nothing is lost by ignoring it.

A node that starts in any other case has accepted corruption (the checker fails the run).
A refusing node must exit non-zero, print an ``error:`` line naming the damaged file (for a
flip) and no traceback, and leave every file as it found it.

Record format read here (``storage.py``): ``[u32 length][u32 crc32][JSON payload]``, payloads
``{"hs": [term, vote]}`` or ``{"es": [[index, term, command], ...]}``. A file that does not
parse this way gets no exemption (any start after damaging it fails).
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

HEADER = struct.Struct("<II")


@dataclass
class Record:
    start: int
    end: int
    payload: dict


@dataclass
class WalScan:
    size: int
    records: list = field(default_factory=list)
    tail: Optional[int] = None        # offset of an incomplete final record
    error: Optional[str] = None       # does not parse as the WAL format


def scan_wal(data: bytes) -> WalScan:
    scan = WalScan(len(data))
    pos = 0
    while pos < len(data):
        if pos + HEADER.size > len(data):
            scan.tail = pos
            break
        length, crc = HEADER.unpack_from(data, pos)
        end = pos + HEADER.size + length
        if end > len(data):
            scan.tail = pos
            break
        body = data[pos + HEADER.size:end]
        if zlib.crc32(body) != crc:
            scan.error = f"checksum mismatch in the record at byte {pos}"
            break
        try:
            payload = json.loads(body)
        except ValueError:
            scan.error = f"record at byte {pos} is not JSON"
            break
        if not isinstance(payload, dict):
            scan.error = f"record at byte {pos} is not an object"
            break
        scan.records.append(Record(pos, end, payload))
        pos = end
    return scan


def wal_paths(data_dir: Path) -> list:
    d = Path(data_dir) / "wal"
    return sorted(p for p in d.iterdir() if p.name.endswith(".wal")) if d.is_dir() else []


def snapshot_paths(data_dir: Path) -> list:
    """Snapshot files, oldest first (names carry the zero-padded index); temp files excluded."""
    d = Path(data_dir) / "snap"
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.name.startswith("snap-") and
                  not p.name.endswith(".tmp"))


def wal_holds_whole_log(data_dir: Path) -> tuple:
    """(True, why) if the WAL segments, read in order, hold entries from index 1 on without a
    gap (a later entry may override an earlier index: a log cut)."""
    top = 0
    for path in wal_paths(data_dir):
        scan = scan_wal(path.read_bytes())
        if scan.error:
            return False, f"{path.name}: {scan.error}"
        for rec in scan.records:
            for entry in rec.payload.get("es", ()):
                index = entry[0]
                if index > top + 1:
                    return False, (f"{path.name} holds index {index} after {top}: the "
                                   f"entries between are only in the snapshot")
                top = max(top, index)
    return True, f"the WAL holds indexes 1..{top}"


def read_tree(data_dir: Path) -> dict:
    """{relative path: bytes} of every file under wal/ and snap/."""
    out = {}
    for sub in ("wal", "snap"):
        d = Path(data_dir) / sub
        if d.is_dir():
            for p in sorted(d.iterdir()):
                if p.is_file():
                    out[f"{sub}/{p.name}"] = p.read_bytes()
    return out


def tree_diff(before: dict, after: dict) -> list:
    diff = [f"{name} removed" for name in sorted(set(before) - set(after))]
    diff += [f"{name} created" for name in sorted(set(after) - set(before))]
    for name in sorted(set(before) & set(after)):
        if before[name] != after[name]:
            diff.append(f"{name} changed ({len(before[name])} -> {len(after[name])} bytes)")
    return diff


def write_tree(data_dir: Path, tree: dict) -> None:
    """Make wal/ and snap/ hold exactly ``tree``."""
    for sub in ("wal", "snap"):
        d = Path(data_dir) / sub
        if d.is_dir():
            for p in d.iterdir():
                if p.is_file() and f"{sub}/{p.name}" not in tree:
                    p.unlink()
    for name, data in tree.items():
        path = Path(data_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@dataclass
class Damage:
    kind: str                     # "flip" | "delete"
    path: Path
    original: bytes
    offset: Optional[int] = None
    bit: Optional[int] = None
    may_start: bool = False
    why: str = ""                 # what the bit hit, and why a start is (not) acceptable

    def describe(self) -> str:
        if self.kind == "delete":
            what = f"deleted {self.path.parent.name}/{self.path.name}"
        else:
            what = (f"flipped bit {self.bit} of byte {self.offset} of "
                    f"{self.path.parent.name}/{self.path.name} ({len(self.original)} bytes)")
        return f"{what}; {self.why}; {'may start' if self.may_start else 'must refuse'}"

    def apply(self) -> None:
        if self.kind == "delete":
            self.path.unlink()
        else:
            data = bytearray(self.original)
            data[self.offset] ^= 1 << self.bit
            self.path.write_bytes(bytes(data))

    def restore(self) -> None:
        self.path.write_bytes(self.original)


def plan_damage(data_dir: Path, args: dict) -> Damage:
    """The damage ``args`` (from the schedule) asks for, resolved against the node's files.

    args: damage = "wal" | "snap" | "delete_snap"; file, pos in [0, 1): which file and where;
    bit in [0, 64): the bit within the byte (bit % 8), or, with header=True, the bit within
    an 8-byte record header (the record chosen by pos)."""
    data_dir = Path(data_dir)
    damage = args["damage"]
    snaps = snapshot_paths(data_dir)
    note = ""
    if damage != "wal" and not snaps:
        damage, note = "wal", "no snapshot yet, so a WAL flip instead; "
    if damage == "wal":
        segments = wal_paths(data_dir)
        candidates = [p for p in segments if p.stat().st_size > 0]
        if not candidates:
            raise RuntimeError(f"{data_dir} has no non-empty WAL segment")
        path = candidates[min(int(args["file"] * len(candidates)), len(candidates) - 1)]
        data = path.read_bytes()
        scan = scan_wal(data)
        if args.get("header") and scan.records:
            rec = scan.records[min(int(args["pos"] * len(scan.records)), len(scan.records) - 1)]
            offset, bit = rec.start + (args["bit"] // 8) % HEADER.size, args["bit"] % 8
        else:
            offset, bit = min(int(args["pos"] * len(data)), len(data) - 1), args["bit"] % 8
        may, why = wal_flip_exemption(scan, data, path == segments[-1], offset, bit)
        return Damage("flip", path, data, offset, bit, may, note + why)
    newest = snaps[-1]
    whole, why_log = wal_holds_whole_log(data_dir)
    older = len(snaps) > 1
    may = whole or older
    why = (f"an older snapshot remains ({snaps[-2].name})" if older else why_log)
    data = newest.read_bytes()
    if damage == "delete_snap":
        return Damage("delete", newest, data, may_start=may, why=why)
    offset = min(int(args["pos"] * len(data)), len(data) - 1)
    return Damage("flip", newest, data, offset, args["bit"] % 8, may, why)


def wal_flip_exemption(scan: WalScan, data: bytes, last_segment: bool, offset: int,
                       bit: int) -> tuple:
    """(may_start, why) for a flip of ``bit`` at ``offset`` of a segment whose original bytes
    are ``data``."""
    if scan.error:
        return False, f"the segment does not parse as a WAL ({scan.error}): no exemption"
    rec = next((r for r in scan.records if r.start <= offset < r.end), None)
    where = (f"in the record at bytes {rec.start}..{rec.end}" if rec is not None
             else f"in the incomplete final record at byte {scan.tail}")
    if rec is None:
        return last_segment, where + (" of the last segment (a torn write)" if last_segment
                                      else " of an older segment")
    if not last_segment or rec is not scan.records[-1] or offset >= rec.start + 4:
        return False, where + " (a complete record)"
    flipped = bytearray(data[rec.start:rec.start + 4])
    flipped[offset - rec.start] ^= 1 << bit
    length = struct.unpack("<I", bytes(flipped))[0]
    if rec.start + HEADER.size + length > len(data):
        return True, (where + ": the length of the last record now reaches past the end of "
                      "the file, which reads exactly like a torn final write")
    return False, where + " (its length field; the record still ends inside the file)"


def error_line(output: str) -> Optional[str]:
    return next((line for line in output.splitlines() if line.startswith("error:")), None)


def judge_refusal(damage: Damage, returncode: Optional[int], output: str,
                  before: dict, after: dict) -> list:
    """Problems with a refusal to start (empty: a correct refusal)."""
    problems = []
    if returncode == 0:
        problems.append("exited with status 0")
    line = error_line(output)
    if line is None:
        problems.append("printed no 'error:' line")
    elif damage.kind == "flip" and damage.path.name not in line:
        problems.append(f"the error line does not name {damage.path.name}: {line!r}")
    if "Traceback (most recent call last)" in output:
        problems.append("printed a traceback")
    changed = tree_diff(before, after)
    if changed:
        problems.append("changed files while refusing: " + "; ".join(changed[:5]))
    return problems


def tail_lines(text: str, n: int) -> str:
    lines = [line for line in text.strip().splitlines() if not line.startswith("=== nemesis")]
    return " | ".join(lines[-n:]) or "<none>"


def output_since(log_path: Path, offset: int) -> str:
    try:
        with open(log_path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
