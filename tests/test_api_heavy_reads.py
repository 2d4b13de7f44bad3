"""Unbounded reads on a real cluster: many clients listing every task at once, each task with a
10,000-character description, must not blow up the leader's memory or cost it its leadership."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from api_common import MAX_PAGE_BYTES
from harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

TASKS = 3000
DESCRIPTION = "d" * 10_000
READERS = 8
ROUNDS = 3
RSS_GROWTH_BOUND = 96 * 2**20  # the 30 MB list unbounded: ~600 MiB with 8 readers on the old code


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def fill(cluster) -> None:
    local, leader = threading.local(), [cluster.wait_for_leader()]

    def create(i):
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()

        def attempt():  # retried through an election (a duplicate task or two do not matter here)
            try:
                if s.post(leader[0] + "/tasks", json={"title": f"big {i}", "description": DESCRIPTION},
                          timeout=30).status_code == 201:
                    return True
            except requests.RequestException:
                pass
            leader[0] = cluster.wait_for_leader()
            return False
        wait_for(attempt, 30, f"task {i} to be created")
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(create, range(TASKS)))


def test_concurrent_full_lists_are_bounded_and_keep_the_leader(tmp_path):
    with Cluster(tmp_path / "c") as c:
        fill(c)
        leader = c.by_url(c.wait_for_leader())
        term = leader.status()["term"]
        baseline = rss(leader.proc.pid)

        peak, done = [baseline], threading.Event()

        def sample():
            while not done.is_set():
                peak.append(rss(leader.proc.pid))
                time.sleep(0.005)
        sampler = threading.Thread(target=sample)
        sampler.start()
        start = threading.Barrier(READERS)

        def read_all(_):
            s, answers = requests.Session(), []
            for _ in range(ROUNDS):
                start.wait(30)
                r = s.get(leader.url + "/tasks", timeout=60)
                answers.append((r.status_code, len(r.content), r.headers.get("Retry-After"),
                                r.json().get("next_offset")))
            return answers
        try:
            with ThreadPoolExecutor(READERS) as ex:
                answers = [a for per_reader in ex.map(read_all, range(READERS)) for a in per_reader]
        finally:
            done.set()
            sampler.join()

        for n in c.nodes:
            view = n.status()
            assert n.alive and view["term"] == term and view["leader_url"] == leader.url, (n.url, view)
        growth = max(peak) - baseline
        assert growth < RSS_GROWTH_BOUND, f"leader RSS grew by {growth / 2**20:.0f} MiB"
        served = [a for a in answers if a[0] == 200]
        assert len(served) >= ROUNDS, answers
        for status, size, retry_after, next_offset in answers:
            if status == 200:
                assert size <= MAX_PAGE_BYTES + 64 * 1024 and 0 < next_offset < TASKS
            else:
                assert status == 503 and int(retry_after) >= 1
