"""Shared helpers for the dashboard browser tests."""
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import requests.adapters
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "node_dashboard.html"


def wait_until(fn, timeout, interval=0.05, what="condition"):
    """Poll fn() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except (requests.RequestException, ValueError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


class Api:
    """Tiny client for the public HTTP API (what `curl` would do)."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.s = requests.Session()
        self.s.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=32))

    def leader(self, timeout=15):
        return self.cluster.wait_for_leader(timeout)

    def _retry(self, fn, timeout=15):
        # retry while there is no leader (503) or a node is unreachable; anything else is returned
        deadline = time.monotonic() + timeout
        while True:
            try:
                r = fn()
                if r.status_code != 503:
                    return r
            except (requests.ConnectionError, requests.Timeout):
                r = None
            if time.monotonic() >= deadline:
                raise AssertionError(f"API call kept failing: {r and r.status_code} {r and r.text}")
            time.sleep(0.1)

    def create(self, title, description="", node=None, completed=False):
        node = node or self.leader()
        key = {"Idempotency-Key": uuid.uuid4().hex}  # a retry is applied once
        r = self._retry(lambda: self.s.post(f"{node}/tasks", timeout=5, headers=key,
                                            json={"title": title, "description": description, "completed": completed}))
        assert r.status_code == 201, r.text
        return r.json()

    def update(self, task_id, node=None, **fields):
        node = node or self.leader()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        r = self._retry(lambda: self.s.put(f"{node}/tasks/{task_id}", json=fields, timeout=5, headers=key))
        assert r.status_code == 200, r.text
        return r.json()

    def delete(self, task_id, node=None):
        node = node or self.leader()
        key = {"Idempotency-Key": uuid.uuid4().hex}
        r = self._retry(lambda: self.s.delete(f"{node}/tasks/{task_id}", timeout=5, headers=key))
        assert r.status_code in (200, 404), r.text

    def get(self, task_id, node=None):
        node = node or self.leader()
        r = self._retry(lambda: self.s.get(f"{node}/tasks/{task_id}", timeout=5))
        return r.json() if r.status_code == 200 else None

    def tasks(self, node=None, stale=False):
        node = node or self.leader()
        out, offset = [], 0
        while True:
            params = {"limit": 500, "offset": offset}
            if stale:
                params["consistency"] = "stale"
            r = self._retry(lambda: self.s.get(f"{node}/tasks", params=params, timeout=5))
            assert r.status_code == 200, r.text
            body = r.json()
            out.extend(body["tasks"])
            offset += len(body["tasks"])
            if not body["tasks"] or offset >= body["total"]:
                return out

    def clear(self):
        leader = self.leader()
        ids = [t["id"] for t in self.tasks(node=leader)]
        with ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda i: self.delete(i, node=leader), ids))


def open_dashboard(page, node_url, live=True):
    """Load the dashboard from node_url and wait until it has talked to the cluster."""
    page.goto(node_url.rstrip("/") + "/")
    conn = page.locator("#connection")
    expect(conn).to_have_attribute("data-state", "connected")
    expect(page.locator("#cluster-body tr")).to_have_count(3)
    if live:
        expect(conn).to_have_attribute("data-mode", "live")
    expect(page.locator("#board")).to_have_attribute("data-loaded", "true")
    return page


def task_row(page, title):
    """The list item whose title is exactly `title`."""
    return page.locator("#task-list li.task").filter(
        has=page.locator(".title").get_by_text(title, exact=True))


def screenshot_path(tmp_path, name):
    if os.environ.get("PICKLEDB_UPDATE_SCREENSHOTS") == "1":
        return ROOT / "docs" / name
    return tmp_path / name
