"""Backups and restore: the file format refuses damage; a restore round trip at 100,000 tasks
through real node processes keeps every task byte for byte; a backup taken while writes go on
is a prefix of the history, at exactly its index, with nothing torn."""
import itertools
import os
import subprocess
import sys
import threading
import uuid

import orjson
import pytest
import requests

from backup import BackupError, decode_backup, encode_backup, read_backup, restore
from harness import ROOT, Cluster, wait_for
from storage import Storage, encode_snapshot

BACKUP_SCRIPT = os.path.join(ROOT, "backup.py")


def make_state(n: int, seed: str = "t") -> dict:
    tasks = {}
    for i in range(n):
        task_id = uuid.uuid4().hex
        tasks[task_id] = {"id": task_id, "title": f"{seed} {i} \u00e9\u00df\U0001f600", "description": "d" * (i % 50),
                          "completed": i % 3 == 0, "created_at": "2026-11-27T10:00:00.000000Z",
                          "updated_at": "2026-11-27T10:00:00.000000Z", "version": 1 + i % 4}
    return {"tasks": tasks, "kv": {"k/1": {"nested": [1, 2.5, None, "x"]}, "k2": -(2**63)}}


def write_backup(path, state, index=120, term=3) -> bytes:
    data = encode_backup(index, term, state, "0123456789abcdef", [{"id": "a:1", "url": "http://a:1", "role": "voter"}])
    path.write_bytes(data)
    return data


def run_cli(*args):
    return subprocess.run([sys.executable, BACKUP_SCRIPT, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


# ------------------------------------------------------------------ the file format, offline
def test_restore_seeds_an_empty_directory_that_storage_loads(tmp_path):
    state = make_state(50)
    write_backup(tmp_path / "b.json", state, index=120, term=3)
    done = restore(str(tmp_path / "b.json"), str(tmp_path / "new"), "n1", "http://127.0.0.1:26099")
    assert (done["index"], done["term"], done["tasks"], done["keys"]) == (120, 3, 50, 2)
    assert done["source_cluster_id"] == "0123456789abcdef" and len(done["cluster_id"]) == 16
    assert done["cluster_id"] != done["source_cluster_id"]
    assert done["members"] == [{"id": "n1", "url": "http://127.0.0.1:26099", "role": "voter"}]
    storage = Storage(str(tmp_path / "new"))
    loaded, entries = storage.load()
    storage.close()
    assert loaded == state and entries == []
    assert storage.snapshot_meta["index"] == 120
    assert storage.hard_state[0] == 3  # never below the log's last term
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "new"]  # no staging directory left


@pytest.mark.parametrize("cut", [1, 2, 66, 67, 1000, -1])
def test_a_truncated_backup_is_refused(tmp_path, cut):
    data = write_backup(tmp_path / "b.json", make_state(20))
    keep = len(data) - cut if cut > 0 else len(data) // 2
    (tmp_path / "b.json").write_bytes(data[:keep])
    with pytest.raises(BackupError, match="refused"):
        restore(str(tmp_path / "b.json"), str(tmp_path / "new"), "n1", "http://127.0.0.1:26099")
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b.json"]  # no staging directory left


def test_an_altered_backup_is_refused(tmp_path):
    data = bytearray(write_backup(tmp_path / "b.json", make_state(20)))
    at = data.index(b'"title":"t 7 ') + len(b'"title":"t ')
    data[at] = ord("8")  # still valid JSON, one task renamed
    (tmp_path / "b.json").write_bytes(bytes(data))
    with pytest.raises(BackupError, match="checksum mismatch"):
        read_backup(str(tmp_path / "b.json"))


def test_a_plain_snapshot_is_not_a_backup():
    data = encode_snapshot({"index": 5, "term": 1, "wal_floor": 0}, {"tasks": {}, "kv": {}})
    with pytest.raises(BackupError, match="not a backup"):
        decode_backup(data)


def test_restore_refuses_a_directory_that_is_not_empty(tmp_path):
    write_backup(tmp_path / "b.json", make_state(3))
    target = tmp_path / "node"
    target.mkdir()
    (target / "keep.txt").write_text("data of a running node")
    with pytest.raises(BackupError, match="not empty"):
        restore(str(tmp_path / "b.json"), str(target), "n1", "http://127.0.0.1:26099")
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


def test_the_command_line_refuses_damage_in_one_line(tmp_path):
    data = write_backup(tmp_path / "b.json", make_state(5))
    (tmp_path / "cut.json").write_bytes(data[:-10])
    proc = run_cli("restore", tmp_path / "cut.json", "--data-dir", tmp_path / "d", "--url", "http://127.0.0.1:26099")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: backup ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "d").exists()
    proc = run_cli("verify", tmp_path / "b.json")
    assert proc.returncode == 0 and "is intact: index 120, term 3, 5 tasks, 2 keys" in proc.stdout
    proc = run_cli("restore", tmp_path / "b.json", "--data-dir", tmp_path / "d", "--url", "http://127.0.0.1:26099")
    assert proc.returncode == 0 and "restored 5 tasks and 2 keys at index 120" in proc.stdout, proc.stderr
    assert "one voter 127.0.0.1:26099" in proc.stdout


# ------------------------------------------------------------------ real nodes
def seed_node_dir(data_dir: str, state: dict, index: int, term: int) -> None:
    storage = Storage(data_dir)
    storage.load()
    storage.append((term, None), [])
    storage.save_snapshot(index, term, state)
    storage.close()


def all_task_pages(url: str) -> list[bytes]:
    """The tasks part of every page of GET /tasks, as sent (the rest names the node's applied index)."""
    pages, offset, session = [], 0, requests.Session()
    while offset is not None:
        r = session.get(f"{url}/tasks?limit=10000&offset={offset}", timeout=60)
        assert r.status_code == 200, r.text[:300]
        pages.append(r.content[:r.content.rindex(b'],"total":') + 1])
        offset = orjson.loads(r.content)["next_offset"]
    return pages


@pytest.mark.cluster
def test_restore_round_trip_at_100000_tasks_keeps_every_task(tmp_path):
    state = make_state(100_000)
    source = Cluster(tmp_path / "source", n=1, base_port=26000)
    seed_node_dir(source.node(0).data_dir, state, index=100_007, term=2)
    with source:
        source.wait_for_leader()
        url = source.node(0).url
        r = requests.get(url + "/cluster/backup", timeout=60)
        assert r.status_code == 200, r.text[:300]
        index = int(r.headers["X-PickleDB-Backup-Index"])
        assert index >= 100_008  # the snapshot's entries and the new leader's no-op
        (tmp_path / "backup.json").write_bytes(r.content)
        assert r.headers["X-PickleDB-Backup-SHA256"] == r.content[-66:-2].decode()
        source_pages = all_task_pages(url)
    descriptor, backed_up = read_backup(str(tmp_path / "backup.json"))
    assert descriptor["index"] == index and descriptor["tasks"] == 100_000
    assert backed_up == state and list(backed_up["tasks"]) == list(state["tasks"])  # order too

    target = Cluster(tmp_path / "target", n=1, base_port=26001)
    node = target.node(0)
    proc = run_cli("restore", tmp_path / "backup.json", "--data-dir", node.data_dir, "--url", node.url)
    assert proc.returncode == 0, proc.stderr
    with target:
        target.wait_for_leader()
        assert node.status()["applied_index"] > index
        assert all_task_pages(node.url) == source_pages  # byte for byte, in order
        r = requests.get(node.url + "/jobs", timeout=30)
        assert r.status_code == 200 and r.json() == state["kv"]
        # The restored cluster takes writes after the restored history.
        r = requests.post(node.url + "/tasks", json={"title": "after the restore"}, timeout=10)
        assert r.status_code == 201
        assert requests.get(node.url + "/tasks?limit=1", timeout=10).json()["total"] == 100_001


class Writer(threading.Thread):
    """Creates its own tasks one at a time and updates each once; remembers what was acknowledged
    and when (a sequence number from a shared counter, taken after the answer arrived)."""

    def __init__(self, url: str, name: str, stop: threading.Event, clock):
        super().__init__(daemon=True)
        self.url, self.name, self.stop, self.clock = url, name, stop, clock
        self.acked: list[tuple[int, str, int]] = []  # (when, task id, version)
        self.errors: list[str] = []

    def run(self):
        session, i = requests.Session(), 0
        while not self.stop.is_set():
            r = session.post(self.url + "/tasks", json={"title": f"{self.name}-{i}", "description": "v1"}, timeout=10)
            if r.status_code != 201:
                self.errors.append(r.text)
                return
            task_id = r.json()["id"]
            self.acked.append((next(self.clock), task_id, 1))
            r = session.put(f"{self.url}/tasks/{task_id}", json={"description": "v2", "completed": True}, timeout=10)
            if r.status_code != 200:
                self.errors.append(r.text)
                return
            self.acked.append((next(self.clock), task_id, 2))
            i += 1


@pytest.mark.cluster
def test_a_backup_under_concurrent_writes_is_a_prefix_of_the_history(tmp_path):
    clock = itertools.count()
    with Cluster(tmp_path / "c", n=1, base_port=26002) as c:
        c.wait_for_leader()
        url = c.node(0).url
        stop = threading.Event()
        writers = [Writer(url, f"w{k}", stop, clock) for k in range(4)]
        for w in writers:
            w.start()
        backups = []
        try:
            for _ in range(3):
                wait_for(lambda: sum(len(w.acked) for w in writers) > 40 * (len(backups) + 1), 30, "writes")
                asked = next(clock)
                r = requests.get(url + "/cluster/backup", timeout=30)
                assert r.status_code == 200, r.text[:300]
                backups.append((asked, decode_backup(r.content)))
        finally:
            stop.set()
            for w in writers:
                w.join(15)
        assert not any(w.errors for w in writers), [w.errors for w in writers]
    assert len({descriptor["index"] for _, (descriptor, _) in backups}) == 3
    for asked, (descriptor, state) in backups:
        tasks = state["tasks"]
        for task in tasks.values():  # nothing torn: a task is one whole version of itself
            assert task["description"] == f"v{task['version']}" and task["completed"] == (task["version"] == 2)
        for w in writers:
            numbers = sorted(int(t["title"].split("-")[1]) for t in tasks.values()
                             if t["title"].startswith(w.name + "-"))
            assert numbers == list(range(len(numbers))), f"{w.name}: not a prefix of its writes"
            for when, task_id, version in w.acked:
                if when < asked:  # acknowledged before the backup was asked for: in it
                    assert task_id in tasks and tasks[task_id]["version"] >= version
        # Exactly the history up to the backup's index: a single node's log is its first no-op,
        # then one entry per create and per update.
        assert sum(t["version"] for t in tasks.values()) == descriptor["index"] - 1
