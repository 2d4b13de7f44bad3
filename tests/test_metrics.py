"""Prometheus metrics: the per-node registry, the WAL fsync timing through a real Storage, the HTTP
requests observed by the real HTTP server with bounded labels, and the exposition and docs/ files
checked by promtool."""
import os
import shutil
import subprocess
import threading
import time
from types import SimpleNamespace

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.routing import Rule

from api_server import create_app
from cluster_manager import NodeConfig
from harness import Cluster, free_ports, wait_for
from http_server import HTTPServer
from metrics import ROUTE_KEY, NodeMetrics
from node_cli import peer_routes
from storage import Storage
from test_api import api_client, make_node, running_node

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMTOOL = shutil.which("promtool")


def status_view(**changes) -> dict:
    view = {"node_id": "http://127.0.0.1:1", "role": "leader", "is_leader": True, "term": 7,
            "leader": "http://127.0.0.1:1", "commit_index": 40, "applied_index": 39, "last_log_index": 42,
            "snapshot_index": 10, "peers": {"http://127.0.0.1:2": {"match_index": 42, "lag": 0},
                                            "http://127.0.0.1:3": {"match_index": 30, "lag": 12}}}
    view.update(changes)
    return view


def fake_node(view: dict, heard_ago: float = 0.0):
    """What the collector reads of a node: its status view and its core's leader contact time."""
    core = SimpleNamespace(leader_contact=time.monotonic() - heard_ago, election_timeout=1.0)
    return SimpleNamespace(status=lambda: view, core=core)


def parse(text: str) -> dict:
    """{(name, frozenset(labels)): value} of one scrape."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def samples(metrics: NodeMetrics) -> dict:
    return parse(metrics.render(None)[0].decode())


def scrape(url: str) -> dict:
    r = requests.get(url + "/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4"), r.text
    return parse(r.text)


def value(scrape: dict, name: str, **labels):
    return scrape.get((name, frozenset(labels.items())))


def test_raft_gauges_are_read_from_the_status_at_scrape_time():
    view = status_view()
    node = fake_node(view)
    metrics = NodeMetrics(node)
    s = samples(metrics)
    assert value(s, "pickledb_raft_term") == 7
    assert value(s, "pickledb_raft_is_leader") == 1
    assert value(s, "pickledb_raft_has_leader") == 1
    assert value(s, "pickledb_raft_commit_index") == 40
    assert value(s, "pickledb_raft_applied_index") == 39
    assert value(s, "pickledb_replication_lag_entries", peer="http://127.0.0.1:3") == 12
    assert value(s, "pickledb_replication_lag_entries", peer="http://127.0.0.1:2") == 0
    view.update(role="follower", is_leader=False, leader="http://127.0.0.1:2", term=8, peers={})
    s = samples(metrics)
    assert value(s, "pickledb_raft_term") == 8
    assert value(s, "pickledb_raft_is_leader") == 0 and value(s, "pickledb_raft_has_leader") == 1
    assert not [k for k in s if k[0] == "pickledb_replication_lag_entries"]
    node.core.leader_contact -= 1.5  # silent for more than an election timeout: it still names the leader
    assert value(samples(metrics), "pickledb_raft_has_leader") == 0
    view.update(leader=None)
    node.core.leader_contact = time.monotonic()
    assert value(samples(metrics), "pickledb_raft_has_leader") == 0


def test_two_nodes_in_one_process_keep_separate_registries():
    a, b = NodeMetrics(fake_node(status_view())), NodeMetrics(fake_node(status_view(term=1)))
    a.saw_leader("x")
    assert value(samples(a), "pickledb_raft_leader_changes_total") == 1
    assert value(samples(b), "pickledb_raft_leader_changes_total") == 0
    assert value(samples(b), "pickledb_raft_term") == 1


def test_leader_changes_count_each_new_leader_once():
    metrics = NodeMetrics(fake_node(status_view()))
    for leader in (None, "a", "a", None, "a", "b", "b", None, "c"):
        metrics.saw_leader(leader)
    assert value(samples(metrics), "pickledb_raft_leader_changes_total") == 3  # a, b, c


def test_every_wal_fsync_of_a_real_storage_is_timed(tmp_path):
    metrics = NodeMetrics(fake_node(status_view()))
    storage = Storage(str(tmp_path / "data"), fs=metrics.wal_fs())
    storage.load()
    before = value(samples(metrics), "pickledb_wal_fsync_seconds_count")
    for i in range(1, 6):
        storage.append((1, None) if i == 1 else None, [(i, 1, {"op": "noop"})])
        metrics.appended([(i, 1, {"op": "noop"})])
    metrics.appended([])  # a Ready with no entries is no batch
    storage.close()
    s = samples(metrics)
    assert value(s, "pickledb_wal_fsync_seconds_count") == before + 5
    assert value(s, "pickledb_wal_fsync_seconds_sum") > 0
    assert value(s, "pickledb_append_batch_entries_count") == 5
    assert value(s, "pickledb_append_batch_entries_bucket", le="1.0") == 5


@pytest.fixture
def served_node(tmp_path):
    """A single node behind the real HTTP server, observed as node_cli.py wires it."""
    config = NodeConfig(port=free_ports(1)[0], data_dir=str(tmp_path / "n"), heartbeat_interval=0.05,
                        election_timeout=0.2)
    with running_node(config) as node:
        server = HTTPServer(create_app(node), "127.0.0.1", config.port, peer_routes(),
                            on_response=node.metrics.on_response)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield node
        finally:
            server.stop()
            thread.join(5)


def test_http_requests_are_labelled_by_url_rule_with_bounded_values(served_node):
    url = served_node.url
    for i in range(20):
        assert requests.get(f"{url}/tasks/{i:032x}", timeout=5).status_code == 404  # no such task
    created = requests.post(f"{url}/tasks", json={"title": "t"}, timeout=5)
    assert created.status_code == 201
    assert requests.get(f"{url}/tasks/{created.json()['id']}", timeout=5).status_code == 200
    assert requests.get(f"{url}/no/such/path", timeout=5).status_code == 404
    assert requests.request("FROB", f"{url}/tasks", timeout=5).status_code == 405
    assert requests.put(f"{url}/tasks", json={}, timeout=5).status_code == 405
    # Node-to-node requests are not client traffic (no cluster secret: every peer path is one).
    assert requests.post(f"{url}/raft/vote", data=b"x", timeout=5).status_code == 403
    s = scrape(url)  # the scrape's own request starts its response after the counts are read
    assert value(s, "pickledb_http_requests_total", route="/tasks/<task_id>", method="GET", status="404") == 20
    assert value(s, "pickledb_http_requests_total", route="/tasks/<task_id>", method="GET", status="200") == 1
    assert value(s, "pickledb_http_requests_total", route="/tasks", method="POST", status="201") == 1
    assert value(s, "pickledb_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value(s, "pickledb_http_requests_total", route="unmatched", method="other", status="405") == 1
    assert value(s, "pickledb_http_requests_total", route="unmatched", method="PUT", status="405") == 1
    assert value(s, "pickledb_http_request_seconds_count", route="/tasks/<task_id>") == 21
    assert value(s, "pickledb_http_request_seconds_sum", route="/tasks/<task_id>") > 0
    routes = {dict(labels).get("route") for name, labels in s if name.startswith("pickledb_http_")}
    assert routes == {"/tasks/<task_id>", "/tasks", "unmatched"}  # no raw path, no peer path
    assert sum(v for (name, _), v in s.items() if name == "pickledb_http_requests_total") == 25
    assert value(scrape(url), "pickledb_http_requests_total", route="/metrics", method="GET", status="200") == 1


def test_request_counts_from_many_threads_are_exact_and_buckets_are_upper_inclusive():
    """Request threads queue their observations without a lock and whoever finds the queue long
    folds it: no observation may be lost or counted twice, whatever the interleaving."""
    metrics = NodeMetrics(fake_node(status_view()))
    threads, per_thread = 8, 5_000

    environ = {ROUTE_KEY: Rule("/tasks"), "REQUEST_METHOD": "POST"}

    def observe():
        for i in range(per_thread):
            metrics.on_response(environ, "201 CREATED", 0.001 if i % 2 else 0.0011)
    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    s = samples(metrics)
    total = threads * per_thread
    assert value(s, "pickledb_http_requests_total", route="/tasks", method="POST", status="201") == total
    assert value(s, "pickledb_http_request_seconds_count", route="/tasks") == total
    assert value(s, "pickledb_http_request_seconds_bucket", route="/tasks", le="0.001") == total / 2  # le: <=
    assert value(s, "pickledb_http_request_seconds_bucket", route="/tasks", le="0.0025") == total
    assert value(s, "pickledb_http_request_seconds_sum", route="/tasks") == pytest.approx(total / 2 * 0.0021)
    metrics.on_response(environ, "201 CREATED", 99.0)  # beyond the last bound
    s = samples(metrics)
    assert value(s, "pickledb_http_request_seconds_bucket", route="/tasks", le="10.0") == total
    assert value(s, "pickledb_http_request_seconds_bucket", route="/tasks", le="+Inf") == total + 1


def test_open_event_streams_are_counted_until_the_server_closes_them(tmp_path):
    node = make_node(tmp_path)
    try:
        wait_for(lambda: node.status()["is_leader"], 5, "single node to lead")
        client = api_client(node)
        first = client.get("/events", buffered=False)
        second = client.get("/events", buffered=False)
        assert value(samples(node.metrics), "pickledb_event_streams") == 2
        first.close()
        assert value(samples(node.metrics), "pickledb_event_streams") == 1
        second.close()
        client.head("/events").close()
        assert value(samples(node.metrics), "pickledb_event_streams") == 0
    finally:
        node.stop()


def test_exposition_passes_promtool_lint():
    assert PROMTOOL, "promtool is not installed (apt-get install -y prometheus; .ci/run does it)"
    metrics = NodeMetrics(fake_node(status_view()))
    metrics.on_response({ROUTE_KEY: Rule("/tasks/<task_id>"), "REQUEST_METHOD": "GET"}, "200 OK", 0.002)
    metrics.saw_leader("a")
    text, content_type = metrics.render(None)
    assert content_type.startswith("text/plain; version=0.0.4")
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    openmetrics, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text") and openmetrics.endswith(b"# EOF\n")


def test_scrape_config_and_alert_rules_pass_promtool():
    assert PROMTOOL, "promtool is not installed (apt-get install -y prometheus; .ci/run does it)"
    config = subprocess.run([PROMTOOL, "check", "config", os.path.join(ROOT, "docs", "prometheus.yml")],
                            capture_output=True, text=True, timeout=30)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "alerts.yml" in config.stdout + config.stderr  # the rule file was checked too


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 15s
tests:
  - interval: 15s
    input_series:
      - series: 'pickledb_raft_has_leader{{job="pickledb", instance="a:4000"}}'
        values: '1 1 0 0 0 0 0 0 0 0'
      - series: 'pickledb_raft_has_leader{{job="pickledb", instance="b:4000"}}'
        values: '1x10'
      - series: 'pickledb_replication_lag_entries{{job="pickledb", instance="b:4000", peer="http://c:4000"}}'
        values: '0 5000x12'
      - series: 'pickledb_replication_lag_entries{{job="pickledb", instance="b:4000", peer="http://a:4000"}}'
        values: '0x12'
      - series: 'pickledb_wal_fsync_seconds_bucket{{job="pickledb", instance="a:4000", le="0.01"}}'
        values: '0+100x60'
      - series: 'pickledb_wal_fsync_seconds_bucket{{job="pickledb", instance="a:4000", le="+Inf"}}'
        values: '0+100x60'
      - series: 'pickledb_wal_fsync_seconds_bucket{{job="pickledb", instance="b:4000", le="0.01"}}'
        values: '0+1x60'
      - series: 'pickledb_wal_fsync_seconds_bucket{{job="pickledb", instance="b:4000", le="1"}}'
        values: '0+100x60'
      - series: 'pickledb_wal_fsync_seconds_bucket{{job="pickledb", instance="b:4000", le="+Inf"}}'
        values: '0+100x60'
    alert_rule_test:
      - eval_time: 30s
        alertname: PickleDBNoLeader
        exp_alerts: []
      - eval_time: 2m
        alertname: PickleDBNoLeader
        exp_alerts:
          - exp_labels: {{severity: critical, job: pickledb, instance: "a:4000"}}
            exp_annotations: {{summary: "PickleDB node a:4000 has no leader"}}
      - eval_time: 3m
        alertname: PickleDBFollowerLagging
        exp_alerts:
          - exp_labels: {{severity: warning, job: pickledb, instance: "b:4000", peer: "http://c:4000"}}
            exp_annotations: {{summary: "PickleDB follower http://c:4000 lags the leader b:4000 by 5000 entries"}}
      - eval_time: 15m
        alertname: PickleDBFsyncSlow
        exp_alerts:
          - exp_labels: {{severity: warning, job: pickledb, instance: "b:4000"}}
            exp_annotations: {{summary: "PickleDB node b:4000: WAL fsync p99 is 990ms"}}
"""


def test_alert_rules_fire_on_the_conditions_they_name(tmp_path):
    """promtool's rule unit tests: each alert fires for its condition, on the right node, and
    not for healthy series."""
    assert PROMTOOL, "promtool is not installed (apt-get install -y prometheus; .ci/run does it)"
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(ALERT_TESTS.format(rules=os.path.join(ROOT, "docs", "alerts.yml")))
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.cluster
def test_metrics_of_a_real_cluster(tmp_path):
    """A 3-node cluster: the leader's and a follower's scrapes agree with their /status, the
    leader exports each peer's lag, requests are counted by url rule, and the runtime feeds the
    write-path histograms (fsync, batch size)."""
    with Cluster(tmp_path / "c", n=3, base_port=26200) as c:
        leader = c.by_url(c.wait_for_leader())
        ids = [requests.post(leader.url + "/tasks", json={"title": f"t{i}"}, timeout=10).json()["id"]
               for i in range(5)]
        for task_id in ids:
            assert requests.get(f"{leader.url}/tasks/{task_id}", timeout=10).status_code == 200
        c.wait_converged()
        follower = next(n for n in c.nodes if n is not leader)
        for node, is_leader in ((leader, 1), (follower, 0)):
            s = scrape(node.url)
            view = node.status()
            assert value(s, "pickledb_raft_is_leader") == is_leader and value(s, "pickledb_raft_has_leader") == 1
            assert value(s, "pickledb_raft_term") == view["term"]
            assert value(s, "pickledb_raft_applied_index") == view["applied_index"] >= 6
            assert value(s, "pickledb_raft_leader_changes_total") >= 1
            assert value(s, "pickledb_wal_fsync_seconds_count") >= 1
            assert value(s, "pickledb_append_batch_entries_sum") >= 6  # the no-op and five creates
        s = scrape(leader.url)
        lag = {dict(labels)["peer"]: v for (name, labels), v in s.items() if name == "pickledb_replication_lag_entries"}
        peer_ids = {n.url.removeprefix("http://") for n in c.nodes if n is not leader}  # node ids: host:port
        assert set(lag) == peer_ids and all(v >= 0 for v in lag.values())
        assert value(s, "pickledb_http_requests_total", route="/tasks", method="POST", status="201") == 5
        assert value(s, "pickledb_http_requests_total", route="/tasks/<task_id>", method="GET", status="200") == 5
        assert not [k for k in s if ids[0] in str(k)]  # no raw path in any label
