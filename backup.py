"""Backups of the state machine, and restoring one into a new cluster.

A backup file is a snapshot file (storage.encode_snapshot: one JSON document
{"meta", "state", "sha256"} whose SHA-256 covers everything before it), so it is verified with the
same code that verifies snapshots, and pickledb can load it. Next to the tasks and key-values its
state holds a descriptor, covered by the checksum:

    "backup": {"format": "pickledb-backup", "version": 1, "cluster_id": ..., "index": ..., "term": ...,
               "members": [...], "created_at": ..., "tasks": <count>, "keys": <count>}

A backup is taken at the state machine's applied index (committed), from a copy made under its
lock (task dicts are never mutated in place, so a shallow copy is consistent); encoding happens off
the lock while writes go on.

Restoring is offline and seeds an EMPTY data directory for a NEW cluster: a random cluster id, one
voter (the restoring node); the cluster then grows by joining nodes. Command line:

    python backup.py restore FILE --data-dir DIR --url URL [--node-id ID]
    python backup.py verify FILE
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
from datetime import datetime, timezone
from urllib.parse import urlsplit

from cluster_manager import NODE_ID, default_id
from storage import FileSystem, Storage, StorageError, decode_snapshot, encode_snapshot

FORMAT = "pickledb-backup"
VERSION = 1
DESCRIPTOR = "backup"  # key of the descriptor inside the backup's state


class BackupError(Exception):
    """A backup that cannot be used, or a restore that must not happen; the message is one line."""


def encode_backup(index: int, term: int, state: dict, cluster_id: str | None, members: list[dict]) -> bytes:
    """The bytes of a backup of `state` (the state machine's {"tasks", "kv"} at `index`)."""
    descriptor = {"format": FORMAT, "version": VERSION, "cluster_id": cluster_id, "index": index, "term": term,
                  "members": members,
                  "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
                  "tasks": len(state["tasks"]), "keys": len(state["kv"])}
    meta = {"index": index, "term": term, "wal_floor": 0}
    return encode_snapshot(meta, {"tasks": state["tasks"], "kv": state["kv"], DESCRIPTOR: descriptor})


def backup_checksum(data: bytes) -> str:
    """The SHA-256 (hex) a backup's trailer names (the file ends in `"sha256":"<hex>"}`)."""
    return bytes(data[-66:-2]).decode()


def decode_backup(data: bytes) -> tuple[dict, dict]:
    """(descriptor, state) of a backup file's bytes, checksum and format verified; BackupError if not."""
    try:
        meta, state = decode_snapshot(data)
    except StorageError as exc:
        raise BackupError(f"not a usable backup: {exc}") from None
    descriptor = state.pop(DESCRIPTOR, None)
    if not isinstance(descriptor, dict) or descriptor.get("format") != FORMAT:
        raise BackupError("not a backup: a snapshot without a backup descriptor")
    if descriptor.get("version") != VERSION:
        raise BackupError(f"backup format version {descriptor.get('version')!r} is not supported (this is {VERSION})")
    if (descriptor.get("index"), descriptor.get("term")) != (meta["index"], meta["term"]):
        raise BackupError("backup descriptor and snapshot meta disagree on the index or term")
    if not isinstance(state.get("tasks"), dict) or not isinstance(state.get("kv"), dict):
        raise BackupError("backup state has no tasks or kv object")
    if (len(state["tasks"]), len(state["kv"])) != (descriptor.get("tasks"), descriptor.get("keys")):
        raise BackupError("backup holds a different number of tasks or keys than its descriptor says")
    return descriptor, state


def read_backup(path: str) -> tuple[dict, dict]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise BackupError(f"cannot read backup {path}: {exc.strerror or exc}") from None
    try:
        return decode_backup(data)
    except BackupError as exc:
        raise BackupError(f"backup {path} is refused: {exc}") from None


def restore(backup_path: str, data_dir: str, node_id: str, url: str) -> dict:
    """Seed the empty (or missing) `data_dir` from a backup, for a new cluster whose only voter is
    `node_id` at `url`. Returns what was restored: index, term, tasks, keys, cluster_id (new),
    source_cluster_id, members. Raises BackupError (one-line message) on a damaged backup, a
    non-empty directory or a directory that cannot be written. The data is written to a
    sibling directory and renamed into place: an interrupted restore leaves no half-seeded
    directory that a node could start from."""
    descriptor, state = read_backup(backup_path)
    data_dir = os.path.abspath(data_dir)
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise BackupError(f"data directory {data_dir} is not empty: restore only seeds a new node "
                          "(stop the node and move its data away first)")
    cluster_id = secrets.token_hex(8)
    members = [{"id": node_id, "url": url, "role": "voter"}]
    index, term = descriptor["index"], descriptor["term"]
    staging = f"{data_dir}.restoring-{secrets.token_hex(4)}"
    try:
        storage = Storage(staging)
        storage.load()
        try:
            # The node's term must not be below its log's last term, or its first election would
            # append entries with a lower term after the snapshot's.
            storage.append((term, None), [])
            storage.save_snapshot(index, term, state, members=members)
            storage.save_cluster({"cluster_id": cluster_id, "members": members})
        finally:
            storage.close()
        os.rename(staging, data_dir)  # replaces an empty directory
        FileSystem().sync_dir(os.path.dirname(data_dir))
    except (StorageError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = exc if isinstance(exc, StorageError) else (exc.strerror or exc)
        raise BackupError(f"cannot restore into {data_dir}: {reason}") from None
    return {"index": index, "term": term, "tasks": len(state["tasks"]), "keys": len(state["kv"]),
            "cluster_id": cluster_id, "source_cluster_id": descriptor["cluster_id"], "members": members}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Check a PickleDB Cluster backup, or restore it into a new cluster.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("restore", help="seed an empty data directory for a new one-node cluster from a backup")
    r.add_argument("file")
    r.add_argument("--data-dir", required=True, help="the new node's data directory (must be empty or missing)")
    r.add_argument("--url", required=True, help="the new node's URL, e.g. http://127.0.0.1:4000")
    r.add_argument("--node-id", help="the new node's id (default HOST:PORT of --url)")
    v = sub.add_parser("verify", help="check a backup's checksum and format, and describe it")
    v.add_argument("file")
    args = p.parse_args(argv)
    try:
        if args.command == "verify":
            descriptor, _ = read_backup(args.file)
            print(f"backup {args.file} is intact: index {descriptor['index']}, term {descriptor['term']}, "
                  f"{descriptor['tasks']} tasks, {descriptor['keys']} keys, cluster {descriptor['cluster_id']}, "
                  f"taken {descriptor['created_at']}")
            return 0
        parts = urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            p.error(f"--url {args.url!r} must look like http://HOST:PORT")
        if args.node_id is not None and not NODE_ID.fullmatch(args.node_id):
            p.error("--node-id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        node_id = args.node_id or default_id(args.url)
        done = restore(args.file, args.data_dir, node_id, args.url)
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"restored {done['tasks']} tasks and {done['keys']} keys at index {done['index']} into {args.data_dir}; "
          f"new cluster {done['cluster_id']} with one voter {node_id} ({args.url}). Start that node with no "
          "peers, then add nodes with --join.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
