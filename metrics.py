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

the open event streams by the events blueprint (api_events.py, beside its stream slots), and the
HTTP metrics by the HTTP server, which hands each client response to `requests.observe` as it
starts (http_server's on_response; node-to-node requests are not observed). They are labelled by
the Flask url rule the app leaves in the environ (api_server's edge checks, ROUTE_KEY), never by
the raw path, so the label values stay bounded. The request threads queue their observations,
which are folded into counts in batches and before every scrape (RequestStats).
"""
from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections import deque
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from storage import AppendFile, FileSystem

FSYNC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SNAPSHOT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others: "other"
UNMATCHED = "unmatched"  # the route label of a request no url rule matched (404, 405)
FOLD_EVERY = 1024  # queued request observations that one request thread then folds into the metrics
ROUTE_KEY = "pickledb.route"  # the environ key of the url rule (werkzeug Rule) the app matched, if any


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


def histogram_buckets(bounds: tuple, counts: list) -> list[tuple[str, float]]:
    """Prometheus' cumulative (le, count) pairs from per-bucket counts (+Inf last)."""
    return list(zip([floatToGoString(b) for b in bounds] + ["+Inf"], itertools.accumulate(counts)))


class SingleWriterHistogram:
    """A histogram observed by one thread only, the raft loop's (WAL writes happen there), so
    without prometheus-client's lock per observation: every commit waits for that thread. A
    scrape copies the counts; it may see one observation in the buckets and not yet in the sum."""

    def __init__(self, name: str, documentation: str, bounds: tuple):
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.sum += value

    def collect(self):
        buckets = histogram_buckets(self.bounds, list(self.counts))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self.sum)


class RequestStats:
    """pickledb_http_requests_total and pickledb_http_request_seconds, counted here rather than
    in prometheus-client's Counter and Histogram: those take a lock per observation (three per
    request), and with 48 request threads contending that cost 4-6% of 3-node write throughput
    in bench/ops.py. A request thread only appends to a queue (deque.append needs no lock); the
    queue is folded into plain counts in batches, by one thread at a time, and before a scrape."""

    def __init__(self):
        self._pending: deque = deque()
        self._lock = threading.Lock()
        self._counts: dict[tuple, int] = {}  # (route, method, status) -> requests
        self._latency: dict[str, list] = {}  # route -> [requests per bucket (+Inf last), sum of seconds]

    def observe(self, environ: dict, status: str, seconds: float) -> None:
        """One client response, as it starts (http_server's on_response): the request's WSGI
        environ, the status line ("201 CREATED") and the seconds since the request was taken up."""
        pending = self._pending
        pending.append((environ.get(ROUTE_KEY), environ["REQUEST_METHOD"], status, seconds))
        if len(pending) >= FOLD_EVERY and self._lock.acquire(blocking=False):
            try:
                self._fold()
            finally:
                self._lock.release()

    def _fold(self) -> None:
        """Move the queued observations into the counts (the caller holds _lock)."""
        pending, counts, latency = self._pending, self._counts, self._latency
        for _ in range(len(pending)):
            rule, method, status, seconds = pending.popleft()
            route = rule.rule if rule is not None else UNMATCHED
            key = (route, method if method in METHODS else "other", status[:3])
            counts[key] = counts.get(key, 0) + 1
            per_route = latency.get(route)
            if per_route is None:
                per_route = latency[route] = [[0] * (len(REQUEST_BUCKETS) + 1), 0.0]
            per_route[0][bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1  # the first bound >= seconds
            per_route[1] += seconds

    def collect(self):
        with self._lock:
            self._fold()  # every request answered so far is counted
            counts = sorted(self._counts.items())
            latency = sorted((route, list(buckets), total) for route, (buckets, total) in self._latency.items())
        requests = CounterMetricFamily("pickledb_http_requests", "Client HTTP requests answered, by route "
                                       "(Flask url rule), method and status.", labels=["route", "method", "status"])
        for (route, method, status), n in counts:
            requests.add_metric([route, method, status], n)
        yield requests
        seconds = HistogramMetricFamily("pickledb_http_request_seconds", "Time from a worker thread taking up a "
                                        "client request until its response starts.", labels=["route"])
        for route, buckets, total in latency:
            seconds.add_metric([route], histogram_buckets(REQUEST_BUCKETS, buckets), sum_value=total)
        yield seconds


class NodeMetrics:
    def __init__(self, node):
        """`node` gives status() and its RaftCore, read at scrape time only."""
        self.registry = CollectorRegistry()
        self.registry.register(RaftCollector(node))
        self.fsync_seconds = SingleWriterHistogram(
            "pickledb_wal_fsync_seconds", "Time of each fsync of the write-ahead log (one per batch of writes).",
            FSYNC_BUCKETS)
        self.append_batch_entries = SingleWriterHistogram(
            "pickledb_append_batch_entries", "Log entries written to the WAL with one fsync (group commit size).",
            BATCH_BUCKETS)
        self.registry.register(self.fsync_seconds)
        self.registry.register(self.append_batch_entries)
        self.snapshot_seconds = Histogram(
            "pickledb_snapshot_seconds", "Time to write a snapshot of the state machine (encode, write, fsync).",
            buckets=SNAPSHOT_BUCKETS, registry=self.registry)
        self.leader_changes = Counter(
            "pickledb_raft_leader_changes", "Leader changes this node has seen (the first leader it learns of "
            "counts too).", registry=self.registry)
        self.requests = RequestStats()
        self.registry.register(self.requests)
        self.on_response = self.requests.observe  # the HTTP server's response observer (node_cli.py)
        self.event_streams = Gauge("pickledb_event_streams", "Event streams (text/event-stream) open now.",
                                   registry=self.registry)
        self._leader: str | None = None

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

    def render(self, accept: str | None) -> tuple[bytes, str]:
        """The exposition in the format the scraper asks for (Prometheus text by default)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self.registry), content_type

