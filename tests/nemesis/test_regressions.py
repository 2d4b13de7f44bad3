"""Deterministic reproductions of product bugs the nemesis campaign found. Each one pins a
single fault so it fails the same way every time (the campaign finds them by chance).

1. A write forwarded by a follower is answered ``503 no_leader`` ("definitely not
   applied", per the contract) when the follower lost the leader's *answer*, although the
   leader had committed and applied it. Campaign symptom: linearizability / lost-write /
   stale-read checkers report values and tasks written only by requests answered as
   definitely failed.
2. The leader stops accepting connections under forwarded load: every follower keeps one
   keep-alive connection to the leader per request thread (48 threads each), so the
   leader's waitress reaches its connection limit (100) and new clients, ``/status`` polls
   and peers' fresh connections hang. Campaign symptom: NO RECOVERY after healing.
"""
import threading
import time

import pytest

from .campaign import proxied_cluster
from .cluster import NemesisCluster, established_connections, get_status, http_call
from .proxy import ProxyNet
from .workload import classify

pytestmark = pytest.mark.nemesis


def _read_job(url, key, deadline_s=20.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        r = http_call(url, "GET", f"/jobs/{key}", timeout=5)
        if r.status in (200, 404):
            return r
        time.sleep(0.1)
    raise AssertionError(f"could not read {key} from {url}")


def test_forwarded_write_whose_answer_is_lost_is_not_reported_as_failed(tmp_path):
    net = ProxyNet(seed=1)
    cluster = proxied_cluster(tmp_path, 3, net)
    try:
        cluster.start()
        lead = cluster.wait_for_leader(30)
        leader, follower = cluster.urls[lead], cluster.urls[(lead + 1) % 3]
        # The follower's requests to the leader arrive; the leader's answers are lost.
        # (Raft traffic is unaffected: the leader sends to the follower on the other link.)
        net.set_link(follower, leader, drop_resp=True)
        res = http_call(follower, "POST", "/set", {"key": "regress1", "value": "applied?"},
                        timeout=30)
        outcome, err = classify(res, "set", read=False)
        net.heal()
        stored = _read_job(leader, "regress1")
        applied = stored.status == 200 and stored.body.get("value") == "applied?"
        assert not (outcome == "fail" and applied), (
            f"the follower answered HTTP {res.status} {res.body} ({err}), which the contract "
            f"defines as 'not applied', but the leader applied the write: GET /jobs/regress1 "
            f"-> {stored.body}. A forward whose answer was lost must be answered 503 "
            f"unknown_outcome (api_server.forward maps every RequestException to no_leader).")
    finally:
        cluster.stop()
        net.close()


def test_leader_keeps_accepting_connections_under_forwarded_load(tmp_path):
    """5 nodes, no proxies and no faults: 4 followers x 30 concurrent clients write
    (forwarded to the leader) for a few rounds; the leader must still answer a fresh
    GET /status promptly."""
    cluster = NemesisCluster(tmp_path, 5)
    try:
        cluster.start()
        lead = cluster.wait_for_leader(30)
        leader = cluster.urls[lead]
        followers = [u for u in cluster.urls if u != leader]
        stop_at = time.monotonic() + 6.0
        counts = {"ok": 0, "other": 0}
        lock = threading.Lock()

        def client(url, n):
            i = 0
            while time.monotonic() < stop_at and i < 25:
                i += 1
                r = http_call(url, "POST", "/set", {"key": f"load{n % 5}", "value": i},
                              timeout=3)
                with lock:
                    counts["ok" if r.ok else "other"] += 1

        threads = [threading.Thread(target=client, args=(f, k), daemon=True)
                   for f in followers for k in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        conns = established_connections(cluster.ports[lead])
        answered = None
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and answered is None:
            answered = get_status(leader, timeout=2)
        assert answered is not None, (
            f"the leader {leader} stopped answering new connections after forwarded load "
            f"({counts['ok']} writes ok, {counts['other']} not); {conns} established TCP "
            f"connections to its port (waitress connection_limit is 100; each follower keeps "
            f"one keep-alive connection to the leader per request thread)")
    finally:
        cluster.stop()
