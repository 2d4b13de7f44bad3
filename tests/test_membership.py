"""Membership with real node processes (heartbeat 0.1 s, election 0.6 s): bootstrap once, the
configuration in the log, joining, learners, removal, replacement, leadership transfer, cluster ids
and every error of the /cluster API."""
import json
import os
import shutil
import signal
import threading
import time

import pytest
import requests

from harness import Cluster, NodeProc, wait_for

pytestmark = pytest.mark.cluster


def create(url, title, timeout=10):
    r = requests.post(url + "/tasks", json={"title": title}, timeout=timeout)
    assert r.status_code == 201, r.text
    return r.json()


def titles(url):
    r = requests.get(url + "/tasks?consistency=stale", timeout=10)
    assert r.status_code == 200, r.text
    return {t["title"] for t in r.json()["tasks"]}


def members(url):
    r = requests.get(url + "/cluster/members", timeout=10)
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["members"]}


def roles(url):
    return {i: m["role"] for i, m in members(url).items()}


def api(method, url, path, body=None, timeout=30):
    return requests.request(method, url + path, json=body, timeout=timeout)


def error_of(resp, status, code):
    assert resp.status_code == status and resp.headers["Content-Type"].startswith("application/json"), resp.text
    assert resp.json()["error"] == code, resp.text


def leader_of(cluster, exclude=None, timeout=5.0):
    return cluster.by_url(cluster.wait_for_leader(timeout=timeout, exclude=exclude))


def cluster_id(node):
    with open(os.path.join(node.data_dir, "cluster.json")) as f:
        return json.load(f)["cluster_id"]


def test_growing_to_five_and_restarting_the_old_three_keeps_every_acknowledged_write(tmp_path):
    """The issue's 5-to-3 scenario: --peers of the old 3-node layout no longer decides who votes."""
    c = Cluster(tmp_path / "c", base_port=21000)
    try:
        c.start()
        leader = leader_of(c)
        create(leader.url, "before growing")
        # Grow to five through the API (the new nodes ask to join; they become voters).
        added = [c.add(port=21003 + i, join=[c.nodes[0].url]) for i in range(2)]
        for node in added:
            wait_for(lambda: roles(leader.url).get(node.id) == "voter", 30, f"{node.id} to become a voter")
        assert cluster_id(added[0]) == cluster_id(c.nodes[0])  # adopted and persisted
        with open(os.path.join(added[0].data_dir, "cluster.json")) as f:  # and the bootstrap configuration
            assert {m["id"] for m in json.load(f)["members"]} == {n.id for n in c.nodes[:3]}
        # Kill two of the original three (not the leader), write: committed by the other three of five.
        old = [n for n in c.nodes[:3] if n is not leader]
        for n in old:
            n.kill9()
        create(leader.url, "acknowledged with two of five down")
        for n in c.nodes:
            n.stop()
        # Restart the old 3-node layout, the two killed ones first: they hold a 5-voter
        # configuration in their logs and cannot elect each other without the third.
        for n in old + [leader]:
            n.start(wait=False)
        new_leader = leader_of(c, timeout=15)
        assert new_leader in old + [leader]
        wait_for(lambda: all("acknowledged with two of five down" in titles(n.url) for n in old + [leader]),
                 15, "the acknowledged write on every restarted node")
        assert set(roles(new_leader.url)) == {n.id for n in c.nodes}  # still five members
    finally:
        c.stop()


def test_a_mistyped_peer_list_is_reported_and_the_cluster_still_elects(tmp_path):
    c = Cluster(tmp_path / "c", base_port=21010)
    try:
        c.start()
        leader = leader_of(c)
        create(leader.url, "x")
        victim = next(n for n in c.nodes if n is not leader)
        victim.stop()
        # 21015 instead of the right peer: the log's configuration is kept, with a warning.
        wrong = [u.replace(str(c.nodes[2].port), "21015") if c.nodes[2] is not victim else
                 u.replace(str(c.nodes[1].port), "21015") for u in victim.peers]
        victim.extra_args = ["--peers", ",".join(wrong)]
        victim.start()
        wait_for(lambda: "--peers differs from the cluster's configuration" in victim.log_tail(200)
                 and "only in --peers: 127.0.0.1:21015=http://127.0.0.1:21015" in victim.log_tail(200),
                 10, "a warning naming the difference")
        assert "only in --peers: 127.0.0.1:21015" in victim.status()["peers_mismatch"]  # and the dashboard shows it
        assert leader.status()["peers_mismatch"] is None
        leader.kill9()
        new_leader = leader_of(c, exclude=leader, timeout=10)
        create(new_leader.url, "after failover")
    finally:
        c.stop()


def test_learners_promotion_transfer_removal_and_replacement(tmp_path):
    c = Cluster(tmp_path / "c", base_port=21020)
    try:
        c.start()
        leader = leader_of(c)
        for i in range(30):
            create(leader.url, f"t{i}")
        # A learner: receives the log, never votes, stays a learner.
        learner = c.add(port=21023, join=[c.nodes[1].url], start=False)
        learner.extra_args = ["--learner"]
        learner.start()
        wait_for(lambda: roles(leader.url).get(learner.id) == "learner", 15, "the learner to be added")
        wait_for(lambda: "t29" in titles(learner.url), 15, "the learner to catch up")
        assert learner.status()["voter"] is False
        # Asking again for a learner is idempotent (200, not 201).
        r = api("POST", leader.url, "/cluster/members", {"url": learner.url, "learner": True})
        assert r.status_code == 200 and r.json()["member"]["role"] == "learner", r.text
        # Promote it through a follower (forwarded to the leader): answers once it votes.
        follower = next(n for n in c.nodes[:3] if n is not leader)
        r = api("POST", follower.url, "/cluster/members", {"url": learner.url, "id": learner.id})
        assert r.status_code == 200 and r.json()["member"]["role"] == "voter", r.text
        assert roles(leader.url)[learner.id] == "voter"

        # Transfer to a named node, then to any node.
        r = api("POST", follower.url, "/cluster/leader", {"id": learner.id})
        assert r.status_code == 200 and r.json()["leader"] == learner.id, r.text
        assert leader_of(c).id == learner.id
        r = api("POST", learner.url, "/cluster/leader", {})
        assert r.status_code == 200 and r.json()["leader"] != learner.id, r.text
        leader = leader_of(c)

        # Remove a follower: it leaves the configuration and stops counting.
        gone = next(n for n in c.nodes if n is not leader and n is not learner)
        r = api("DELETE", leader.url, f"/cluster/members/{gone.id}")
        assert r.status_code == 200, r.text
        assert gone.id not in members(leader.url)
        create(leader.url, "after removing a follower")

        # Remove the leader itself: it hands over and steps down once the change commits.
        term = leader.status()["term"]
        r = api("DELETE", leader.url, f"/cluster/members/{leader.id}")
        assert r.status_code == 200, r.text
        new_leader = leader_of(c, exclude=leader)
        assert new_leader is not gone and leader.id not in members(new_leader.url)
        assert not leader.status()["is_leader"] and new_leader.status()["term"] == term + 1
        # The removed nodes do not disrupt: their (pre-)votes are ignored, so the term stays put
        # over several of their election timeouts (an observation window, not a wait for a state).
        time.sleep(4 * c.election)
        assert new_leader.status()["term"] == term + 1 and new_leader.status()["is_leader"]
        create(new_leader.url, "after removing the leader")

        # Replace a node whose disk died: kill it, remove its id, start it empty with --join.
        dead = next(n for n in c.nodes if n.alive and n is not new_leader and n.id in members(new_leader.url))
        dead.kill9()
        shutil.rmtree(dead.data_dir)
        r = api("DELETE", new_leader.url, f"/cluster/members/{dead.id}")
        assert r.status_code == 200, r.text
        dead.join = [new_leader.url]
        dead.extra_args = []
        dead.start()
        wait_for(lambda: roles(new_leader.url).get(dead.id) == "voter", 20, "the replacement to vote")
        wait_for(lambda: "after removing the leader" in titles(dead.url), 10, "the replacement's data")
    finally:
        c.stop()


def test_sigterm_on_the_leader_hands_leadership_over(tmp_path):
    c = Cluster(tmp_path / "c", base_port=21030)
    try:
        c.start()
        leader = leader_of(c)
        create(leader.url, "x")
        term = leader.status()["term"]
        start = time.monotonic()
        leader.proc.send_signal(signal.SIGTERM)
        new_leader = leader_of(c, exclude=leader, timeout=5)
        took = time.monotonic() - start
        # A transfer, not an election timeout: one term up, no contest, well within the timeout.
        assert new_leader.status()["term"] == term + 1
        assert took < c.election, took
        assert leader.proc.wait(10) == 0
        assert "handed leadership over to" in leader.log_tail(50)
        create(new_leader.url, "after the hand-over")
    finally:
        c.stop()


def test_membership_api_errors(tmp_path):
    c = Cluster(tmp_path / "c", base_port=21040, heartbeat=0.3, election=3.0)
    try:
        c.start()
        leader = leader_of(c, timeout=15)
        follower = next(n for n in c.nodes if n is not leader)
        for node in (leader, follower):
            error_of(api("POST", node.url, "/cluster/members", {"url": "ftp://x"}), 400, "invalid_request")
            error_of(api("POST", node.url, "/cluster/members", {"url": "http://127.0.0.1:21049", "id": "a b"}),
                     400, "invalid_request")
            error_of(api("POST", node.url, "/cluster/members", {"url": "http://127.0.0.1:21049", "learner": 1}),
                     400, "invalid_request")
            error_of(api("POST", node.url, "/cluster/members", [1]), 400, "invalid_request")
            error_of(api("POST", node.url, "/cluster/members", {"url": follower.url, "id": "other"}),
                     409, "url_in_use")
            error_of(api("DELETE", node.url, "/cluster/members/nobody"), 404, "unknown_member")
            error_of(api("POST", node.url, "/cluster/leader", {"id": "nobody"}), 404, "unknown_member")
        # A learner cannot lead.
        r = api("POST", leader.url, "/cluster/members", {"url": "http://127.0.0.1:21049", "learner": True})
        assert r.status_code == 201 and r.json()["member"]["role"] == "learner", r.text
        error_of(api("POST", leader.url, "/cluster/leader", {"id": "127.0.0.1:21049"}), 409, "not_voter")
        # A second change while one is uncommitted: the followers are frozen, so the first waits.
        for n in c.nodes:
            if n is not leader:
                n.pause()
        first = {}
        t = threading.Thread(target=lambda: first.update(r=api("DELETE", leader.url, "/cluster/members/127.0.0.1:21049")))
        t.start()
        wait_for(lambda: "proposed configuration" in leader.log_tail(20) and
                 leader.log_tail(20).count("proposed configuration") >= 2, 5, "the first change proposed")
        error_of(api("DELETE", leader.url, f"/cluster/members/{follower.id}"), 409, "change_in_progress")
        for n in c.nodes:
            n.resume()
        t.join(30)
        assert first["r"].status_code in (200, 503), first["r"].text
    finally:
        c.stop()


def test_last_voter_and_no_leader(tmp_path):
    c = Cluster(tmp_path / "c", n=1, base_port=21050)
    try:
        c.start()
        leader = leader_of(c)
        error_of(api("DELETE", leader.url, f"/cluster/members/{leader.id}"), 409, "last_voter")
        error_of(api("POST", leader.url, "/cluster/leader", {}), 409, "no_target")
    finally:
        c.stop()
    c = Cluster(tmp_path / "d", n=2, base_port=21052)
    try:
        c.nodes[1].start()  # alone of two: no leader
        r = api("POST", c.nodes[1].url, "/cluster/members", {"url": "http://127.0.0.1:21059"})
        error_of(r, 503, "no_leader")
        error_of(api("DELETE", c.nodes[1].url, f"/cluster/members/{c.nodes[0].id}"), 503, "no_leader")
    finally:
        c.stop()


def test_a_node_of_another_cluster_is_refused_and_shown(tmp_path):
    a = Cluster(tmp_path / "a", base_port=21060)
    b = Cluster(tmp_path / "b", n=1, base_port=21065)
    try:
        a.start()
        leader_of(a)
        target = a.nodes[0]
        # A node bootstrapped into another cluster that lists one of ours as its peer.
        stray = b.nodes[0]
        stray.extra_args = ["--peers", target.url]
        stray.start()
        foreign = cluster_id(stray)
        assert foreign != cluster_id(target)
        wait_for(lambda: target.status()["cluster_mismatch"] == foreign, 10, "the mismatch to show")
        view = requests.get(target.url + "/cluster/status", timeout=10).json()
        assert view["cluster_mismatch"] == foreign and view["cluster_id"] == cluster_id(target)
        assert {n["id"] for n in view["nodes"]} == {n.id for n in a.nodes}
        log = target.log_tail(400)
        assert f"from cluster {foreign}" in log
        assert log.count(f"from cluster {foreign}") <= 3  # rate limited
        assert target.status()["term"] == leader_of(a).status()["term"]
    finally:
        b.stop()
        a.stop()
