"""Contract tests: schemathesis drives every operation of docs/openapi.yaml against a real 3-node
cluster and checks every answer against the document (status codes, content types, bodies,
headers, undocumented methods, auth), plus stateful sequences that follow the document's links
(create -> read -> conditional update -> delete).

The bounded CI run is capped in examples and seconds. PICKLEDB_LONG_CONTRACT=1 runs the long
one (many more examples, minutes of fuzzing and stateful sequences):

    PICKLEDB_LONG_CONTRACT=1 flock /work/wt/heavy.lock .venv/bin/python -m pytest -q \
        tests/test_contract_schemathesis.py

A failure prints schemathesis's report: the failing check, the request (as curl) and the answer.
PICKLEDB_CONTRACT_SEED=N replays a run's data (the seed is printed either way).
"""
import os
import random
import subprocess
import sys

import pytest

from harness import ROOT, Cluster, free_ports, wait_for

pytestmark = pytest.mark.cluster

SPEC = os.path.join(ROOT, "docs", "openapi.yaml")
SCHEMATHESIS = [sys.executable, "-m", "schemathesis.cli"]
LONG = os.environ.get("PICKLEDB_LONG_CONTRACT") == "1"
# Per run: examples per operation, and a time budget for the whole run (the stateful phase
# repeats until it is spent). CI runs it twice (through a follower, then the leader).
MAX_EXAMPLES = 400 if LONG else 25
MAX_SECONDS = 600 if LONG else 40
SECRET = "contract-tests-cluster-secret"
# The documented 503s (no_leader, busy, ...) are part of the contract: the document says on
# which operations each may appear, and status_code_conformance checks that. Any other 5xx fails.
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


def base_port() -> int:
    """Three consecutive ports in this suite's range (25000-25999) that are free now."""
    for _ in range(50):
        port = random.randrange(25000, 25997)
        if all(p in free_ports_in(port) for p in range(port, port + 3)):
            return port
    raise AssertionError("no three free consecutive ports in 25000-25999")


def free_ports_in(port: int) -> set[int]:
    import socket
    free = set()
    for p in range(port, port + 3):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
            free.add(p)
    return free


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("contract"), n=3, base_port=base_port(), secret=SECRET,
                heartbeat=0.1, election=0.6)
    c.start()
    try:
        c.wait_for_leader(30)
        yield c
    finally:
        c.stop()


def run_schemathesis(url: str, tmp_path, seed: int) -> subprocess.CompletedProcess:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [*SCHEMATHESIS, "--config-file", str(config), "--no-color", "run", SPEC, "--url", url,
               "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
               "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_SECONDS), "--seed", str(seed),
               "--workers", "2", "--request-timeout", "10", "--max-failures", "20",
               "--report", "junit", "--report-dir", str(tmp_path / "report"), "--output-truncate", "false"]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=MAX_SECONDS * 3 + 60)


@pytest.mark.parametrize("target", ["follower", "leader"])
def test_every_answer_is_in_the_contract(cluster, tmp_path, target):
    leader_url = cluster.wait_for_leader(30)
    url = leader_url if target == "leader" else next(u for u in cluster.urls if u != leader_url)
    seed = int(os.environ.get("PICKLEDB_CONTRACT_SEED") or random.randrange(2**31))
    result = run_schemathesis(url, tmp_path, seed)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"schemathesis (seed {seed}) against the {target} {url}:\n{output[-20000:]}"
    # Every phase ran and sent requests: a run that tested nothing proves nothing.
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert phase in output, f"phase {phase} missing from the run:\n{output[-5000:]}"
    dead = [n.url for n in cluster.nodes if not n.alive]
    assert not dead, f"nodes exited during the run: {dead}"
    # The cluster still serves: every node agrees on one leader and applies the same index.
    wait_for(lambda: cluster.wait_converged(15), 20, "the cluster to converge after the run")
