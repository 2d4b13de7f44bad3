"""The disk-fault oracle on files written by the real storage code: where a flipped bit
lands, when a node may start anyway, and what a correct refusal is. No node process."""
import struct
from pathlib import Path

from storage import Storage

from . import disk


def entries(first, last, term=1):
    return [(i, term, {"op": "set", "key": f"k{i}", "value": "v" * 40}) for i in range(first, last + 1)]


def make_node_dir(path: Path, snapshot_at=None, compacted=False, last=30) -> Path:
    """A data directory written by Storage: entries 1..last, optionally a snapshot with the
    compaction after it; ``compacted``: the snapshot covers the whole first segment, which
    compaction drops, and 10 more entries follow."""
    s = Storage(str(path))
    s.load()
    s.append((1, None), entries(1, last // 2))
    s.append(None, entries(last // 2 + 1, last))
    if compacted:
        snapshot_at = last
    if snapshot_at:
        s.save_snapshot(snapshot_at, 1, {"tasks": {}, "kv": {}})
        s.compact(snapshot_at)
    if compacted:
        s.append(None, entries(last + 1, last + 10))
    s.close()
    return path


def last_segment(path: Path) -> Path:
    return disk.wal_paths(path)[-1]


def test_scan_finds_every_record_and_a_torn_tail(tmp_path):
    data = last_segment(make_node_dir(tmp_path / "n")).read_bytes()
    scan = disk.scan_wal(data)
    assert scan.error is None and scan.tail is None
    assert scan.records[0].start == 0 and scan.records[-1].end == len(data)
    assert "hs" in scan.records[0].payload and any("es" in r.payload for r in scan.records)
    torn = disk.scan_wal(data[:-5])
    assert torn.tail == scan.records[-1].start and torn.error is None
    bad = bytearray(data)
    bad[scan.records[1].start + 10] ^= 1
    assert "checksum" in disk.scan_wal(bytes(bad)).error


def _exemption(data: bytes, offset: int, bit: int, last_segment=True):
    return disk.wal_flip_exemption(disk.scan_wal(data), data, last_segment, offset, bit)


def test_a_flip_in_a_complete_record_must_be_refused(tmp_path):
    data = last_segment(make_node_dir(tmp_path / "n")).read_bytes()
    recs = disk.scan_wal(data).records
    middle = recs[len(recs) // 2]
    for offset in (middle.start, middle.start + 5, middle.end - 1, recs[0].start + 9,
                   recs[-1].start + 4, recs[-1].end - 1):
        may, why = _exemption(data, offset, 0)
        assert not may, (offset, why)
    # The last record's length field, still ending inside the file: corruption.
    may, why = _exemption(data, recs[-1].start, 0)
    assert not may and "length field" in why


def test_only_damage_that_reads_like_a_torn_write_may_start(tmp_path):
    data = last_segment(make_node_dir(tmp_path / "n")).read_bytes()
    recs = disk.scan_wal(data).records
    # A high bit of the last record's length: it now reaches past the end of the file.
    may, why = _exemption(data, recs[-1].start + 3, 7)
    assert may and "torn" in why
    # The same bit in an earlier record, or in the last record of an older segment: refused.
    assert not _exemption(data, recs[1].start + 3, 7)[0]
    assert not _exemption(data, recs[-1].start + 3, 7, last_segment=False)[0]
    # A bit inside an incomplete final record (torn by a kill): the repair may cut it.
    torn = data[:-7]
    assert _exemption(torn, len(torn) - 3, 2)[0]
    assert not _exemption(torn, recs[-2].start + 10, 2)[0]


def test_snapshot_damage_may_start_only_while_the_wal_holds_the_whole_log(tmp_path):
    whole = make_node_dir(tmp_path / "whole", snapshot_at=20)
    assert disk.wal_holds_whole_log(whole)[0]
    for damage in ("snap", "delete_snap"):
        d = disk.plan_damage(whole, {"damage": damage, "file": 0, "pos": 0.5, "bit": 3})
        assert d.may_start, d.describe()
    compacted = make_node_dir(tmp_path / "compacted", compacted=True)
    holds, why = disk.wal_holds_whole_log(compacted)
    assert not holds and "only in the snapshot" in why
    for damage in ("snap", "delete_snap"):
        d = disk.plan_damage(compacted, {"damage": damage, "file": 0, "pos": 0.5, "bit": 3})
        assert not d.may_start and d.path.name.startswith("snap-"), d.describe()


def test_plan_apply_restore_round_trip(tmp_path):
    node = make_node_dir(tmp_path / "n", compacted=True)
    before = disk.read_tree(node)
    header = disk.plan_damage(node, {"damage": "wal", "file": 0.99, "pos": 0.0, "bit": 63,
                                     "header": True})
    assert header.offset == 7 and header.bit == 7          # byte 7 of the first header
    d = disk.plan_damage(node, {"damage": "delete_snap", "file": 0.0, "pos": 0.0, "bit": 0})
    d.apply()
    assert disk.tree_diff(before, disk.read_tree(node)) == [f"snap/{d.path.name} removed"]
    d.restore()
    assert disk.read_tree(node) == before
    flip = disk.plan_damage(node, {"damage": "wal", "file": 0.0, "pos": 0.5, "bit": 2})
    flip.apply()
    assert disk.tree_diff(before, disk.read_tree(node)) == [
        f"wal/{flip.path.name} changed ({len(flip.original)} -> {len(flip.original)} bytes)"]
    disk.write_tree(node, before)
    assert disk.read_tree(node) == before
    # No snapshot yet: snapshot damage falls back to a WAL flip, and says so.
    fresh = make_node_dir(tmp_path / "fresh")
    d = disk.plan_damage(fresh, {"damage": "snap", "file": 0.0, "pos": 0.5, "bit": 0})
    assert d.path.suffix == ".wal" and "no snapshot yet" in d.why


def test_judge_refusal(tmp_path):
    node = make_node_dir(tmp_path / "n")
    d = disk.plan_damage(node, {"damage": "wal", "file": 0.0, "pos": 0.5, "bit": 1})
    tree = disk.read_tree(node)
    good = f"some log line\nerror: WAL segment {d.path} is corrupt at byte 9\n"
    assert disk.judge_refusal(d, 2, good, tree, tree) == []
    problems = disk.judge_refusal(d, 0, "Traceback (most recent call last):\n  boom\n", tree,
                                  {**tree, "wal/x.wal": b""})
    assert any("status 0" in p for p in problems)
    assert any("no 'error:' line" in p for p in problems)
    assert any("traceback" in p for p in problems)
    assert any("x.wal created" in p for p in problems)
    assert disk.judge_refusal(d, 2, "error: the log is corrupt\n", tree, tree) == [
        f"the error line does not name {d.path.name}: 'error: the log is corrupt'"]


def test_header_struct_matches_storage():
    import storage
    assert storage.HEADER.format == disk.HEADER.format == struct.Struct("<II").format


# ------------------------------------------------------------------ the executor
class FakeNode:
    """A stopped node whose next start either refuses (as a correct node would, or touching
    a file, or without naming the file) or starts; ``url`` answers /health while it runs."""

    def __init__(self, data_dir: Path, log_path: Path, url: str, behaviour: str):
        self.index, self.data_dir, self.log_path, self.url = 0, data_dir, log_path, url
        self.behaviour, self.up, self.rc, self.may_exit, self.starts = behaviour, True, None, False, 1
        self.paused = False

    def alive(self):
        return self.up

    def returncode(self):
        return None if self.up else self.rc

    def stop(self):
        self.up, self.rc = False, 0
        return 0

    def kill9(self):
        self.up, self.rc = False, -9

    def start(self, extra_env=None, may_exit=False):
        self.starts += 1
        self.may_exit = may_exit
        if self.behaviour == "start" or not may_exit:
            self.up = True
            return
        damaged = [p for p in disk.wal_paths(self.data_dir)]
        name = damaged[0].name if self.behaviour != "vague" else "the log"
        with open(self.log_path, "a") as log:
            log.write(f"error: {name} is corrupt at byte 7\n")
        if self.behaviour == "touch":
            damaged[0].write_bytes(damaged[0].read_bytes()[:10])
        self.up, self.rc = False, 2


def _health_server():
    import http.server
    import threading

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _disk_event(target=0):
    from .schedule import Event
    return Event(1.0, 1, "start", "disk", {"target": target, "stop": "term", "damage": "wal",
                                            "file": 0.0, "pos": 0.5, "bit": 1, "header": False})


def _run_disk_fault(tmp_path, behaviour):
    from .nemesis import Nemesis
    from .proxy import ProxyNet
    from .schedule import Event, Schedule

    node_dir = make_node_dir(tmp_path / "n")
    before = disk.read_tree(node_dir)
    server = _health_server()
    node = FakeNode(node_dir, tmp_path / "n.log", f"http://127.0.0.1:{server.server_port}",
                    behaviour)

    class OneNode:
        def __init__(self, proc):
            self.n, self.urls, self.procs = 1, [proc.url], [proc]

        def node(self, i):
            return self.procs[i]

        def current_leader(self, statuses=None):
            return 0

    net = ProxyNet(seed=0)
    nem = Nemesis(OneNode(node), net, Schedule(0, "disk", 1, 10, 20, []), lambda: 0.0)
    try:
        nem.apply(_disk_event())
        restored = disk.read_tree(node_dir) == before
        nem.apply(Event(2.0, 1, "end", "disk", {}))
    finally:
        server.shutdown()
        net.close()
    return nem, node, restored


def test_a_correct_refusal_is_no_finding_and_the_files_come_back(tmp_path):
    nem, node, restored = _run_disk_fault(tmp_path, "refuse")
    assert nem.disk_faults == 1 and nem.disk_findings == [], nem.disk_findings
    assert restored and node.alive() and not node.may_exit
    assert any("refused to start (rc=2)" in line for line in nem.log), nem.log


def test_a_start_on_damaged_files_is_a_finding(tmp_path):
    nem, node, restored = _run_disk_fault(tmp_path, "start")
    assert len(nem.disk_findings) == 1 and "STARTED on damaged files" in nem.disk_findings[0]
    assert restored and node.alive()


def test_a_refusal_that_changes_files_or_names_nothing_is_a_finding(tmp_path):
    nem, _, restored = _run_disk_fault(tmp_path, "touch")
    assert restored and any("changed files while refusing" in f for f in nem.disk_findings)
    nem, _, _ = _run_disk_fault(tmp_path / "vague", "vague")
    assert any("does not name" in f for f in nem.disk_findings), nem.disk_findings
