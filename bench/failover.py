"""A steady write load for the failover benchmark: closed-loop clients that record every request.

Each client POSTs /tasks in a loop to one node; on an error (connection refused or reset,
a 503 while there is no leader, a timeout) it moves to the next node and retries the same write
(same Idempotency-Key, so it is applied once) after RETRY_DELAY seconds. Every request is
recorded as (sent, done, ok) on the monotonic clock, so unavailability is measured from the
requests themselves, not from /status polling.
"""
from __future__ import annotations

import threading
import time
import uuid

import requests

BODY = b'{"title":"failover task","description":"written by bench/run.py"}'
HEADERS = {"Content-Type": "application/json"}
RETRY_DELAY = 0.05


class WriteLoad:
    def __init__(self, urls: list[str], clients: int = 8, timeout: float = 10.0):
        self.urls, self.clients, self.timeout = list(urls), clients, timeout
        self.records: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True, name=f"load-{i}")
                         for i in range(clients)]

    def start(self) -> "WriteLoad":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    def _client(self, i: int) -> None:
        session = requests.Session()
        node = i % len(self.urls)
        key = uuid.uuid4().hex
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                r = session.post(self.urls[node] + "/tasks", data=BODY, timeout=self.timeout,
                                 headers={**HEADERS, "Idempotency-Key": key})
                ok = r.status_code == 201
            except requests.RequestException:
                ok = False
                session.close()
                session = requests.Session()
            done = time.monotonic()
            self.records.append((sent, done, ok))
            if ok:
                key = uuid.uuid4().hex
            else:
                node = (node + 1) % len(self.urls)
                self._stop.wait(RETRY_DELAY)

    # ------------------------------------------------------------- analysis
    def first_ack_after(self, t: float) -> float | None:
        """Completion time of the first acknowledged write that was sent at or after `t`."""
        done = [d for s, d, ok in list(self.records) if ok and s >= t]
        return min(done) if done else None

    def analyse(self, t_kill: float, t_end: float) -> dict:
        recs = list(self.records)
        first = self.first_ack_after(t_kill)
        acks = sorted(d for s, d, ok in recs if ok)
        # The longest stretch without any acknowledged write that spans the kill.
        before = [d for d in acks if d <= t_kill]
        gap_start = before[-1] if before else t_kill
        after = [d for d in acks if d > t_kill]
        gap = (after[0] - gap_start) if after else None
        failed = sum(1 for s, d, ok in recs if not ok and d >= t_kill and (first is None or s <= first))
        window = [r for r in recs if t_kill - 1.0 <= r[0] < t_end]
        return {
            "unavailable_s": None if first is None else round(first - t_kill, 4),
            "max_gap_s": None if gap is None else round(gap, 4),
            "failed_requests": failed,
            "requests_in_window": len(window),
            "acked_total": sum(1 for r in recs if r[2]),
        }
