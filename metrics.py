"""Prometheus metrics of one node (GET /metrics, served by api_ops.py).

Each node has its own CollectorRegistry, so several nodes can run in one process (tests). The
Raft gauges are read from node.status() when /metrics is scraped: they cost nothing on the write
path. What has to be seen as it happens is observed where it happens, each by one line of the
runtime (cluster_manager.py):

    self.metrics = NodeMetrics(self)                               # Node.__init__, first
    self.storage = Storage(config.data_dir, fs=self.metrics.wal_fs())  # every WAL fsync timed
    self.metrics.appended(rd.entries)                              # after storage.append()
    self.metrics.saw_leader(core.leader_id)                        # _publish_status()
    with self.metrics.snapshot_seconds.time():                     # around save_snapshot()

and the HTTP metrics by a WSGI middleware (`instrument(app)`), labelled by the Flask url rule
(never the raw path, so the label values stay bounded) and outside the node-to-node routes.
"""
from __future__ import annotations

import time
from typing import Callable

from flask import request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily

from storage import AppendFile, FileSystem

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
UNMATCHED = "unmatched"  # the route label of a request no url rule matched (404, 405)
ROUTE_KEY = "pickledb.route"  # environ key the url rule is passed in, from Flask to the middleware


class TimedAppendFile(AppendFile):
    def __init__(self, path: str, observe: Callable[[float], None]):
        super().__init__(path)
        self._observe = observe

    def sync(self) -> None:
        started = time.perf_counter()
        super().sync()
        self._observe(time.perf_counter() - started)


class TimedFileSystem(FileSystem):
    """The real file system, timing each fsync of a WAL segment (the only files opened for append)."""

    def __init__(self, observe: Callable[[float], None]):
        self._observe = observe

    def open_append(self, path: str) -> AppendFile:
        return TimedAppendFile(path, self._observe)


def leader_known(node, view: dict) -> bool:
    """Whether the node leads, or heard from its leader within an election timeout: a follower cut
    off from the leader goes on naming it in its status while it looks for a new one."""
    if view["is_leader"]:
        return True
    core = node.core
    return view["leader"] is not None and time.monotonic() - core.leader_contact < core.election_timeout


class RaftCollector:
    """Gauges read from the node's status view at scrape time."""

    def __init__(self, node):
        self.node = node

    def collect(self):
        view = self.node.status()

        def gauge(name: str, text: str, value) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, text, value=float(value))
        yield gauge("pickledb_raft_term", "Current Raft term of this node.", view["term"])
        yield gauge("pickledb_raft_is_leader", "1 if this node is the leader, else 0.", view["is_leader"])
        yield gauge("pickledb_raft_has_leader", "1 if this node leads or heard from its leader within an "
                    "election timeout, else 0.", leader_known(self.node, view))
        yield gauge("pickledb_raft_commit_index", "Highest log index this node knows to be committed.",
                    view["commit_index"])
        yield gauge("pickledb_raft_applied_index", "Highest log index applied to this node's state machine.",
                    view["applied_index"])
        yield gauge("pickledb_raft_last_log_index", "Index of the last entry in this node's log.",
                    view["last_log_index"])
        yield gauge("pickledb_raft_snapshot_index", "Log index of this node's newest snapshot.",
                    view["snapshot_index"])
        lag = GaugeMetricFamily("pickledb_replication_lag_entries", "On the leader: entries of its log that the "
                                "peer has not acknowledged (last log index minus the peer's match index).",
                                labels=["peer"])
        for peer, progress in sorted(view["peers"].items()):
            lag.add_metric([peer], float(progress["lag"]))
        yield lag


class NodeMetrics:
    def __init__(self, node):
        """`node` gives status() and its RaftCore, read at scrape time only."""
        self.registry = CollectorRegistry()
        self.registry.register(RaftCollector(node))
        self.fsync_seconds = Histogram(
            "pickledb_wal_fsync_seconds", "Time of each fsync of the write-ahead log (one per batch of writes).",
            buckets=FSYNC_BUCKETS, registry=self.registry)
        self.append_batch_entries = Histogram(
            "pickledb_append_batch_entries", "Log entries written to the WAL with one fsync (group commit size).",
            buckets=BATCH_BUCKETS, registry=self.registry)
        self.snapshot_seconds = Histogram(
            "pickledb_snapshot_seconds", "Time to write a snapshot of the state machine (encode, write, fsync).",
            buckets=SNAPSHOT_BUCKETS, registry=self.registry)
        self.leader_changes = Counter(
            "pickledb_raft_leader_changes", "Leader changes this node has seen (the first leader it learns of "
            "counts too).", registry=self.registry)
        self.http_requests = Counter(
            "pickledb_http_requests", "Client HTTP requests answered, by route (Flask url rule), method and status.",
            ["route", "method", "status"], registry=self.registry)
        self.http_request_seconds = Histogram(
            "pickledb_http_request_seconds", "Time from receiving a client request until its response starts.",
            ["route"], buckets=REQUEST_BUCKETS, registry=self.registry)
        self.event_streams = Gauge("pickledb_event_streams", "Event streams (text/event-stream) open now.",
                                   registry=self.registry)
        self._leader: str | None = None
        # Labelled children by label values: labels() takes a lock and builds a key on every call.
        self._request_children: dict[tuple, Counter] = {}
        self._seconds_children: dict[str, Histogram] = {}

    # ------------------------------------------------------------- runtime hooks
    def wal_fs(self) -> FileSystem:
        return TimedFileSystem(self.fsync_seconds.observe)

    def appended(self, entries: list) -> None:
        if entries:
            self.append_batch_entries.observe(len(entries))

    def saw_leader(self, leader: str | None) -> None:
        """Called with the leader the node knows after each round of the raft loop."""
        if leader is not None and leader != self._leader:
            self._leader = leader
            self.leader_changes.inc()

    # ------------------------------------------------------------- HTTP
    def instrument(self, app) -> None:
        """Count and time every request `app` (a Flask app) serves. Call it before the node-to-node
        routes are put in front of app.wsgi_app, so Raft traffic is not measured."""
        app.teardown_request(note_route)
        app.wsgi_app = HttpMetrics(app.wsgi_app, self)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method if method in METHODS else "other", status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.http_requests.labels(*key)
        counter.inc()
        histogram = self._seconds_children.get(route)
        if histogram is None:
            histogram = self._seconds_children[route] = self.http_request_seconds.labels(route)
        histogram.observe(seconds)

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asks for (Prometheus text by default)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type


def note_route(_exc) -> None:
    """Flask teardown hook: hands the matched url rule to the middleware (Flask has dropped the
    request object by the time the middleware sees the response)."""
    rule = request.url_rule
    request.environ[ROUTE_KEY] = rule.rule if rule is not None else UNMATCHED


class HttpMetrics:
    """WSGI middleware: counts and times each request; counts open event streams."""

    def __init__(self, wsgi_app, metrics: NodeMetrics):
        self.wsgi_app, self.metrics = wsgi_app, metrics

    def __call__(self, environ, start_response):
        started = time.perf_counter()
        answer = []

        def start(status, headers, exc_info=None):
            answer[:] = status, headers
            return start_response(status, headers, exc_info)
        body = self.wsgi_app(environ, start)
        status, headers = answer  # Flask starts the response before it returns the body
        method = environ.get("REQUEST_METHOD", "")
        self.metrics.observe_request(environ.get(ROUTE_KEY, UNMATCHED), method, int(status[:3]),
                                     time.perf_counter() - started)
        for name, value in headers:  # a plain loop: this runs for every request
            if name == "Content-Type":  # as Flask spells it
                if value.startswith("text/event-stream") and method != "HEAD":
                    return OpenStream(body, self.metrics.event_streams)
                break
        return body


class OpenStream:
    """A streamed response body, counted in a gauge from now until the server closes it."""

    def __init__(self, body, gauge: Gauge):
        self.body, self.gauge, self.open = body, gauge, True
        gauge.inc()

    def __iter__(self):
        return iter(self.body)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.gauge.dec()
        close = getattr(self.body, "close", None)
        if close is not None:
            close()
