"""Real node processes restarting over damaged data: a node refuses to start, says where the
damage is, touches nothing, and once repaired the cluster has every acknowledged write."""
import os
import shutil
import struct

import orjson
import pytest
import requests

from harness import Cluster, wait_for

pytestmark = pytest.mark.cluster


def create(url, title):
    r = requests.post(url + "/tasks", json={"title": title}, timeout=10)
    assert r.status_code == 201, r.text
    return title


def titles(node):
    r = requests.get(node.url + "/tasks?consistency=stale", timeout=10)
    assert r.status_code == 200, r.text
    return {t["title"] for t in r.json()["tasks"]}


def files(path):
    found = {}
    for root, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), path)] = f.read()
    return found


def entry_location(data_dir, index):
    """(segment path, byte offset) of the middle of log entry `index` in a node's WAL."""
    wal = os.path.join(data_dir, "wal")
    for name in sorted(os.listdir(wal)):
        path = os.path.join(wal, name)
        data, pos = open(path, "rb").read(), 0
        while pos + 8 <= len(data):
            length = struct.unpack_from("<I", data, pos)[0]
            body = data[pos + 8:pos + 8 + length]
            for entry in orjson.loads(body).get("es", ()):
                if entry[0] == index:
                    encoded = orjson.dumps(entry)
                    return path, pos + 8 + body.index(encoded) + len(encoded) // 2
            pos += 8 + length
    raise AssertionError(f"entry {index} not found in {wal}")


def flip_bit(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x04]))


def refuses_to_start(node):
    """Start `node`, expect it to exit 2 with one `error:` line and no traceback; return that line."""
    log_start = os.path.getsize(node.log_path) if os.path.exists(node.log_path) else 0
    node.start(wait=False)
    wait_for(lambda: not node.alive, 15, f"node {node.url} to refuse to start")
    with open(node.log_path, "rb") as f:
        f.seek(log_start)
        output = f.read().decode(errors="replace")
    assert node.proc.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, output
    return errors[0]


def test_a_flipped_bit_in_a_followers_wal_loses_no_acknowledged_write(tmp_path):
    """Issue 9 item 2, end to end. Before the fix the damaged follower cut its log at entry 10,
    started, and with the follower that missed the last 30 writes elected a leader: 30 of the
    50 acknowledged tasks were gone from every node."""
    with Cluster(tmp_path / "c") as c:
        leader = c.by_url(c.wait_for_leader())
        behind, damaged = [n for n in c.nodes if n is not leader]
        acked = {create(leader.url, f"a{i}") for i in range(20)}
        c.wait_converged()
        behind.stop()
        acked |= {create(leader.url, f"b{i}") for i in range(30)}
        wait_for(lambda: acked <= titles(damaged), 10, "the damaged follower to have every write")
        c.stop()

        segment, offset = entry_location(damaged.data_dir, 10)
        flip_bit(segment, offset)
        before = files(damaged.data_dir)
        error = refuses_to_start(damaged)
        assert f"WAL segment {segment} is corrupt at byte" in error
        assert files(damaged.data_dir) == before
        behind.start()  # alone it cannot elect a leader, so nothing is lost meanwhile

        flip_bit(segment, offset)  # the operator repairs the file
        damaged.start()
        leader.start()
        c.wait_for_leader()
        c.wait_converged()
        for n in c.nodes:
            assert acked <= titles(n), n.url


def test_a_deleted_snapshot_over_a_compacted_log_refuses_to_start(tmp_path):
    """Issue 9 item 3, end to end. A follower that caught up by InstallSnapshot has no log before
    the snapshot; before the fix, without the snapshot file it started empty and cut its WAL."""
    with Cluster(tmp_path / "c", env={"PICKLEDB_SNAPSHOT_EVERY": "20"}) as c:
        leader = c.by_url(c.wait_for_leader())
        lagging = next(n for n in c.nodes if n is not leader)
        lagging.stop()
        acked = {create(leader.url, f"x{i}") for i in range(60)}
        wait_for(lambda: (leader.status() or {}).get("snapshot_index", 0) >= 40, 10, "a leader snapshot")
        lagging.start()
        c.wait_converged()
        assert (lagging.status() or {})["snapshot_index"] >= 40
        c.stop()

        snap_dir = os.path.join(lagging.data_dir, "snap")
        aside = tmp_path / "snap-aside"
        shutil.move(snap_dir, aside)
        os.mkdir(snap_dir)
        before = files(lagging.data_dir)
        error = refuses_to_start(lagging)
        assert "there is no snapshot" in error and lagging.data_dir in error
        assert files(lagging.data_dir) == before

        os.rmdir(snap_dir)
        shutil.move(aside, snap_dir)
        for n in c.nodes:
            n.start(wait=False)
        c.wait_for_leader()
        c.wait_converged()
        for n in c.nodes:
            assert acked <= titles(n), n.url


def test_a_disk_that_fills_up_under_a_running_node_stops_it_with_one_error_line(tmp_path):
    """After a failed WAL write or fsync the log can no longer be trusted to be durable: the node
    exits (it never acknowledges the write) and says why in one line, without a traceback."""
    import subprocess
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    try:
        cluster = Cluster(tmp_path / "cluster", n=1)
        node = cluster.node(0)
        node.data_dir = str(disk / "node")
        with cluster:
            cluster.wait_for_leader()
            acknowledged = 0
            for i in range(40):  # 1 MiB holds fewer than 10 of these
                try:
                    r = requests.post(node.url + "/set", json={"key": f"k{i}", "value": "x" * 100_000},
                                      timeout=10)
                except requests.ConnectionError:
                    break
                if r.status_code != 200:
                    break
                acknowledged += 1
            wait_for(lambda: not node.alive, 10, "the node to stop")
            assert node.proc.returncode == 70 and 0 < acknowledged <= 10
            log = open(node.log_path, encoding="utf-8", errors="replace").read()
            assert "Traceback" not in log, log
            assert [line for line in log.splitlines() if line.startswith("error:")] == [
                line for line in log.splitlines() if line.startswith("error: storage failed")] != [], log
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
