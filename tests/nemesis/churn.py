"""Membership churn: a nemesis that changes who is in the cluster while the workload runs.

Seeded, one action at a time, through the public admin API (so what it exercises is what an
operator does): hand leadership to a named voter or to any, remove a follower and add it back
(it rejoins as a learner with its old log and is promoted once caught up), remove the leader
itself (it steps down once the change commits) and add it back. The linearizability and
lost-write checkers of the campaign run on the workload's history as for any other fault.

Every answer must be a success or a documented refusal (409 change_in_progress / leader
changed, 503 no_leader / not_committed / transfer_failed / unknown_outcome); anything else,
a 500 or a non-JSON body, is a finding. At the end every node is a voter again, so the
campaign's convergence checks cover all of them.
"""
from __future__ import annotations

import random
import threading
import time

import requests

EXPECTED = {409: {"change_in_progress", "transfer_in_progress", "leader_not_ready"},
            503: {"no_leader", "not_committed", "transfer_failed", "unknown_outcome"}}
ACTIONS = ("transfer_any", "transfer_named", "remove_follower", "remove_leader")
PAUSE = 1.0  # seconds between two actions (a change takes a few round trips at 0.1 s heartbeats)


def node_id(url: str) -> str:
    return url.split("://", 1)[1]


class Churn(threading.Thread):
    def __init__(self, urls: list[str], seed: int, clock, stop_event: threading.Event | None = None):
        super().__init__(name="churn", daemon=True)
        self.urls = list(urls)
        self.rng = random.Random(seed)
        self.clock = clock
        self.stop_event = stop_event or threading.Event()
        self.log: list[str] = []
        self.findings: list[str] = []
        self.error: str | None = None
        self.removed: set[str] = set()  # URLs taken out and not yet back

    # ---------------------------------------------------------------- API calls
    def _call(self, method: str, url: str, path: str, body=None, timeout: float = 20.0):
        """(status, body) of an admin call, or (None, reason) when it got no answer."""
        try:
            r = requests.request(method, url + path, json=body, timeout=timeout)
        except requests.RequestException as exc:
            return None, str(exc)
        try:
            data = r.json()
        except ValueError:
            self.findings.append(f"{method} {path} via {url}: HTTP {r.status_code} not JSON: {r.text[:200]!r}")
            return r.status_code, None
        if r.status_code >= 400 and data.get("error") not in EXPECTED.get(r.status_code, ()):
            self.findings.append(f"{method} {path} via {url}: unexpected HTTP {r.status_code} {data}")
        return r.status_code, data

    def _leader(self) -> str | None:
        for url in self.urls:
            if url in self.removed:
                continue
            try:
                view = requests.get(url + "/status", timeout=1.0).json()
            except (requests.RequestException, ValueError):
                continue
            if view.get("leader_url"):
                return view["leader_url"]
        return None

    def _note(self, text: str) -> None:
        self.log.append(f"t={self.clock():7.3f} {text}")

    def _add_back(self, url: str, via: str) -> bool:
        status, body = self._call("POST", via, "/cluster/members", {"url": url, "id": node_id(url)}, timeout=60)
        self._note(f"add back {node_id(url)} via {via}: {status} {body}")
        if status in (200, 201):
            self.removed.discard(url)
            return True
        return False

    # ---------------------------------------------------------------- actions
    def step(self) -> None:
        leader = self._leader()
        if leader is None:
            self._note("no leader known: nothing this round")
            return
        for url in sorted(self.removed):  # put back what a failed round left out
            self._add_back(url, leader)
        if self.removed:
            return
        action = self.rng.choice(ACTIONS)
        if action == "transfer_any":
            status, body = self._call("POST", leader, "/cluster/leader", {})
            self._note(f"transfer from {node_id(leader)} to any: {status} {body}")
        elif action == "transfer_named":
            target = self.rng.choice([u for u in self.urls if u != leader])
            status, body = self._call("POST", leader, "/cluster/leader", {"id": node_id(target)})
            self._note(f"transfer from {node_id(leader)} to {node_id(target)}: {status} {body}")
        else:
            victim = leader if action == "remove_leader" else self.rng.choice([u for u in self.urls if u != leader])
            status, body = self._call("DELETE", leader, f"/cluster/members/{node_id(victim)}")
            self._note(f"remove {node_id(victim)} (leader {node_id(leader)}): {status} {body}")
            if status == 200 or status is None or status == 503:
                self.removed.add(victim)  # 503/no answer: maybe removed; adding back is idempotent
                via = next((u for u in self.urls if u != victim), leader)
                self._add_back(victim, self._leader() or via)

    def run(self) -> None:
        try:
            while not self.stop_event.wait(PAUSE):
                self.step()
        except Exception:
            import traceback
            self.error = traceback.format_exc()

    def restore(self, timeout: float = 30.0) -> None:
        """After the run: every node a voter again (bounded)."""
        deadline = time.monotonic() + timeout
        while self.removed and time.monotonic() < deadline:
            leader = self._leader()
            if leader is not None:
                for url in sorted(self.removed):
                    self._add_back(url, leader)
            if self.removed:
                time.sleep(0.2)
        if self.removed:
            self.findings.append(f"could not add back {sorted(self.removed)} within {timeout}s")
