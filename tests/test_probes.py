"""Health probes: /livez while the process serves; /readyz when the node knows a live leader and
has applied what it committed (503 no_leader / catching_up otherwise, ?noleader relaxes the
leader condition). In-process on real nodes, then on a real 3-node cluster losing its quorum."""
import pytest
import requests

from api_common import ctx
from auth import OPEN, permission_of
from harness import Cluster, wait_for
from test_api import api_client, assert_error, client, leaderless, node  # noqa: F401 (fixtures)


def test_livez_and_readyz_on_a_leader(client):
    r = client.get("/livez")
    assert r.status_code == 200 and r.json == {"status": "alive"}
    assert client.post("/tasks", json={"title": "x"}).status_code == 201
    r = client.get("/readyz")
    assert r.status_code == 200, r.json
    assert r.json["status"] == "ready" and r.json["leader"] == client.application.extensions["pickledb"].node.id
    assert r.json["applied_index"] >= r.json["leader_commit"] >= 2


def test_readyz_without_a_leader_says_why_and_noleader_relaxes_it(leaderless):
    assert leaderless.get("/livez").status_code == 200
    r = leaderless.get("/readyz")
    assert_error(r, 503, "no_leader")
    assert r.headers["Retry-After"] == "1" and "knows no leader" in r.json["message"]
    r = leaderless.get("/readyz?noleader")
    assert r.status_code == 200, r.json  # nothing committed that it has not applied


def test_readyz_is_catching_up_while_behind_the_leaders_commit(node):
    """The leader's commit index as last heard (status `leader_commit`) ahead of what is applied:
    the state a follower is in while it catches up."""
    client = api_client(node)
    real_status = node.status

    def behind():
        view = real_status()
        return {**view, "leader_commit": view["applied_index"] + 5}
    node.status = behind
    r = client.get("/readyz")
    assert_error(r, 503, "catching_up")
    assert "has not applied what the leader committed" in r.json["message"]
    assert_error(client.get("/readyz?noleader"), 503, "catching_up")
    node.status = real_status
    assert client.get("/readyz").status_code == 200


def test_probes_are_open_and_backup_is_for_admins(client):
    views = client.application.view_functions
    assert permission_of(views["ops.livez"]) == OPEN and permission_of(views["ops.readyz"]) == OPEN
    assert permission_of(views["ops.metrics"]) == "read"
    assert permission_of(views["ops.cluster_backup"]) == "admin"
    with client.application.app_context():
        assert ctx().node.metrics is not None


@pytest.mark.cluster
def test_readyz_on_a_cluster_that_loses_its_quorum(tmp_path):
    with Cluster(tmp_path / "c", n=3, base_port=26100) as c:
        leader_url = c.wait_for_leader()
        assert requests.post(leader_url + "/tasks", json={"title": "x"}, timeout=10).status_code == 201
        c.wait_converged()
        for n in c.nodes:
            wait_for(lambda: requests.get(n.url + "/readyz", timeout=2).status_code == 200, 10, f"{n.url} ready")
            assert requests.get(n.url + "/livez", timeout=2).json() == {"status": "alive"}
        survivor = next(n for n in c.nodes if n.url != leader_url)
        for n in c.nodes:
            if n is not survivor:
                n.kill9()
        # It goes on naming the dead leader while it looks for a new one: not a known leader.
        r = wait_for(lambda: (lambda r: [r] if r.status_code == 503 else None)(
            requests.get(survivor.url + "/readyz", timeout=2)), 10, "the survivor to lose its leader")[0]
        assert r.json()["error"] == "no_leader" and r.headers["Content-Type"] == "application/json"
        assert requests.get(survivor.url + "/readyz?noleader", timeout=2).status_code == 200
        assert requests.get(survivor.url + "/livez", timeout=2).status_code == 200
        scrape = requests.get(survivor.url + "/metrics", timeout=2).text
        assert "pickledb_raft_has_leader 0.0" in scrape and "pickledb_raft_is_leader 0.0" in scrape
