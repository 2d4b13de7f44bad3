"""Cluster identity and the bootstrap rule, on in-process nodes with real data dirs: --peers is
read once, the cluster id is derived, persisted and checked, a joining node adopts it."""
import json
import logging

import pytest

from cluster_manager import Node, NodeConfig, cluster_id_of
from harness import free_ports, wait_for
from transport import RequestRefused

ELECTION, HEARTBEAT = 0.3, 0.05


def config(tmp_path, port, peers, name="n", **kw):
    return NodeConfig(port=port, peers=list(peers), data_dir=str(tmp_path / name), heartbeat_interval=HEARTBEAT,
                      election_timeout=ELECTION, **kw)


def cluster_file(tmp_path, name="n"):
    return json.loads((tmp_path / name / "cluster.json").read_text())


def test_every_bootstrapping_node_derives_the_same_cluster_id(tmp_path):
    ports = free_ports(3)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    ids = set()
    for i, port in enumerate(ports):
        node = Node(config(tmp_path, port, [u for u in urls if u != urls[i]], name=f"n{i}"))
        ids.add(node.cluster_id)
        assert cluster_file(tmp_path, f"n{i}")["cluster_id"] == node.cluster_id
        assert [m["id"] for m in node.core.members][0] == f"127.0.0.1:{port}"
        node.storage.close()
    members = [{"id": f"127.0.0.1:{p}", "url": u, "role": "voter"} for p, u in zip(ports, urls)]
    assert ids == {cluster_id_of(members)} and len(cluster_id_of(members)) == 16


def test_peers_are_read_once_then_a_difference_is_only_warned_about(tmp_path, caplog):
    port, a, b = free_ports(3)
    node = Node(config(tmp_path, port, [f"http://127.0.0.1:{a}", f"http://127.0.0.1:{b}"]))
    first = node.core.members
    node.storage.close()
    with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
        node = Node(config(tmp_path, port, [f"http://127.0.0.1:{a}", "http://127.0.0.1:5105"]))
    assert node.core.members == first  # the configuration did not follow --peers
    warning = [r.getMessage() for r in caplog.records if "--peers differs" in r.getMessage()]
    assert len(warning) == 1
    assert "only in --peers: 127.0.0.1:5105=http://127.0.0.1:5105" in warning[0]
    assert f"only in the configuration: 127.0.0.1:{b}=http://127.0.0.1:{b}" in warning[0]
    node.storage.close()


def test_a_snapshot_carries_the_configuration_past_a_restart(tmp_path):
    port = free_ports(1)[0]
    node = Node(config(tmp_path, port, [], snapshot_every=5))
    node.start()
    try:
        wait_for(lambda: node.status()["is_leader"], 5, "the single node to lead")
        status, member = node.add_member("learner-1", "http://127.0.0.1:1", learner=True)
        assert status == 201 and member["role"] == "learner"
        for i in range(12):
            node.propose({"op": "set", "key": f"k{i}", "value": i})
        wait_for(lambda: node.storage.snapshot_meta["index"] >= 5, 5, "a snapshot")
    finally:
        node.stop()
    meta = node.storage.snapshot_meta
    assert [m["id"] for m in meta["members"]] == [f"127.0.0.1:{port}", "learner-1"]
    node = Node(config(tmp_path, port, []))
    assert node.core.learners == {"learner-1"}
    node.storage.close()


def test_a_joining_node_adopts_the_cluster_id_of_its_leader_durably(tmp_path):
    port = free_ports(1)[0]
    node = Node(config(tmp_path, port, [], join=["http://127.0.0.1:1"]))
    assert node.cluster_id is None and node.core.members == []
    assert not (tmp_path / "n" / "cluster.json").exists()
    with pytest.raises(RequestRefused) as refused:  # only a leader's message is adopted
        node.check_cluster("0123456789abcdef", "vote_req")
    assert refused.value.status == 409 and refused.value.code == "cluster_mismatch"
    node.check_cluster("0123456789abcdef", "append_req")
    assert node.cluster_id == "0123456789abcdef"
    assert cluster_file(tmp_path)["cluster_id"] == "0123456789abcdef"
    assert node.transport.headers["X-PickleDB-Cluster"] == "0123456789abcdef"
    node.storage.close()
    # After a restart it is a member of that cluster; --join is ignored.
    node = Node(config(tmp_path, port, [], join=["http://127.0.0.1:1"]))
    assert node.cluster_id == "0123456789abcdef"
    node.storage.close()


def test_another_clusters_messages_are_refused_counted_and_logged_rarely(tmp_path, caplog):
    port = free_ports(1)[0]
    node = Node(config(tmp_path, port, []))
    with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
        for _ in range(20):
            with pytest.raises(RequestRefused) as refused:
                node.check_cluster("ffffffffffffffff", "append_req")
            assert refused.value.status == 409 and refused.value.code == "cluster_mismatch"
    assert node.cluster_mismatch == "ffffffffffffffff" and node.mismatches == 20
    assert len([r for r in caplog.records if "from cluster ffffffffffffffff" in r.getMessage()]) == 1
    node.check_cluster(node.cluster_id, "append_req")  # its own cluster passes
    node.storage.close()


def test_a_data_dir_from_before_cluster_ids_takes_peers_as_its_configuration(tmp_path, caplog):
    port, a = free_ports(2)
    node = Node(config(tmp_path, port, [f"http://127.0.0.1:{a}"]))
    node.storage.append((3, None), [(1, 3, {"op": "noop"})])
    node.storage.close()
    (tmp_path / "n" / "cluster.json").unlink()
    with caplog.at_level(logging.WARNING, logger="pickledb_cluster"):
        node = Node(config(tmp_path, port, [f"http://127.0.0.1:{a}"]))
    assert any("written by an earlier version" in r.getMessage() for r in caplog.records)
    assert node.core.voters == {f"127.0.0.1:{port}", f"127.0.0.1:{a}"}
    assert (tmp_path / "n" / "cluster.json").exists()
    node.storage.close()
