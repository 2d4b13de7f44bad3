"""Clients retrying with Idempotency-Key through leader failovers, racing on If-Match: no
create is applied twice, every key's answers agree, no two conditional writes win on one
version; the history is linearizable and nothing acknowledged is lost. Bounded: two leader
kills on a 3-node cluster, about 20 s."""
import requests

from harness import Cluster, wait_for

from .campaign import check_all, list_all_tasks
from .history import OK, History
from .workload import RETRY_MIX, Workload

SEED = 1212
KILLS = 2


def acknowledged_writes(history: History) -> int:
    return sum(1 for op in list(history.ops) if op.is_write and op.outcome == OK)


def test_retried_writes_apply_once_through_leader_kills(tmp_path):
    with Cluster(tmp_path, n=3, base_port=24030) as cluster:
        cluster.wait_for_leader()
        history = History(tmp_path / "history.jsonl")
        workload = Workload(cluster.urls, history, SEED, clients=6, mix=RETRY_MIX, timeout=3.0)
        workload.start()
        try:
            for _ in range(KILLS):
                done = acknowledged_writes(history)
                wait_for(lambda: acknowledged_writes(history) >= done + 60, 30, "writes before the kill")
                leader = cluster.by_url(cluster.wait_for_leader())
                leader.kill9()
                cluster.wait_for_leader(exclude=leader)
                done = acknowledged_writes(history)
                wait_for(lambda: acknowledged_writes(history) >= done + 30, 30, "writes on the new leader")
                leader.start()
        finally:
            workload.stop()
            history.close()
        leader_url = cluster.wait_converged()["url"]
        failed, listing = list_all_tasks(leader_url)
        assert failed is None, failed
        final_jobs = requests.get(leader_url + "/jobs", timeout=8).json()
    ops = history.ops
    checks = check_all(ops, final_jobs, listing["tasks"], None, None, None)
    assert all(c.ok for c in checks), "\n".join(c.explain() for c in checks)
    info = {c.name: c.info for c in checks}
    # The faults were met: writes were retried, conditional writes raced and lost.
    assert info["idempotent-retries"]["retried"] > 0, info
    assert info["conditional-writes"]["won"] > 0 and info["conditional-writes"]["refused_412"] > 0, info
