"""What TLS costs: write throughput of a 3-node cluster over plain HTTP and over HTTPS with mutual
TLS between the nodes, in one invocation, each TLS run paired with a plain run made right
before it at the same concurrency (both clusters stay up; the idle one only sends heartbeats).

    .venv/bin/python bench/tls_bench.py [--smoke]     # alone; bench/run.py calls section()

(Not named tls.py: bench/ comes first on bench/run.py's sys.path and would shadow the node's
tls module.)
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "tests"))
sys.path.insert(0, BENCH)

from harness import Cluster, NodeProc  # noqa: E402
from common import FAST, POST_LUA, log, median, node_pids, rnd, run_wrk, summarize  # noqa: E402
from tls_certs import make_ca, make_node_cert  # noqa: E402


class TLSNode(NodeProc):
    """A harness node that serves HTTPS with mutual TLS to its peers."""

    def __init__(self, cluster: "TLSCluster", index: int, port: int):
        super().__init__(cluster, index, port)
        self.url = f"https://127.0.0.1:{port}"
        self.session.trust_env = False  # $REQUESTS_CA_BUNDLE would replace the cluster CA
        self.session.verify = cluster.ca

    def command(self) -> list[str]:
        c = self.cluster
        return super().command() + ["--tls-cert", c.cert, "--tls-key", c.key, "--tls-ca", c.ca]


class TLSCluster(Cluster):
    def __init__(self, root: str, n: int = 3, heartbeat: float = FAST[0], election: float = FAST[1]):
        certs = os.path.join(root, "certs")
        os.makedirs(certs, exist_ok=True)
        self.ca = make_ca(certs)
        self.cert, self.key = make_node_cert(certs, "node", "IP:127.0.0.1,DNS:localhost")  # one for all: one host
        super().__init__(root, n=n, heartbeat=heartbeat, election=election)
        self.nodes = [TLSNode(self, i, node.port) for i, node in enumerate(self.nodes)]


def start(cluster: Cluster) -> tuple[Cluster, str]:
    try:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=15)
    except BaseException:
        cluster.stop()
        raise
    return cluster, leader


def section(cfg, workdir: str | None = None) -> dict:
    """Write throughput, plain vs TLS, on 3-node clusters; cfg gives repeats, duration, clients."""
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="pickledb-bench-tls-")
    plain, plain_leader = start(Cluster(os.path.join(workdir, "tls-plain"), n=3, heartbeat=FAST[0], election=FAST[1]))
    try:
        secure, secure_leader = start(TLSCluster(os.path.join(workdir, "tls-on")))
        try:
            for url in (plain_leader, secure_leader):
                run_wrk(url + "/tasks", POST_LUA, 16, 1)  # warm-up, not recorded
            rows = []
            for k in cfg.clients:
                pairs = []
                for rep in range(cfg.repeats):
                    p = run_wrk(plain_leader + "/tasks", POST_LUA, k, cfg.duration, pids=node_pids(plain, plain_leader))
                    s = run_wrk(secure_leader + "/tasks", POST_LUA, k, cfg.duration,
                                pids=node_pids(secure, secure_leader))
                    pairs.append((p, s))
                    log(f"  tls: {k:>2} clients, run {rep + 1}: plain {p['rps']:7.0f} req/s, TLS {s['rps']:7.0f} "
                        f"req/s; p50 {p['p50_ms']:.2f} / {s['p50_ms']:.2f} ms; errors {p['errors']} / {s['errors']}")
                rows.append({"nodes": 3, "clients": k,
                             "plain": summarize([p for p, _ in pairs]), "tls": summarize([s for _, s in pairs]),
                             "ratio": rnd(median(s["rps"] / p["rps"] for p, s in pairs if p["rps"])),
                             "leader_cpu": {"plain": rnd(median(p["cpu"]["leader"] for p, _ in pairs), 2),
                                            "tls": rnd(median(s["cpu"]["leader"] for _, s in pairs), 2)}})
            return {"rows": rows, "note": "TLS 1.3 (ECDSA P-256 certificates), mutual TLS between nodes; "
                                          "keep-alive connections, so handshakes are not in the figures"}
        finally:
            secure.stop()
    finally:
        plain.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def readme_text(result: dict) -> str:
    """The README's Performance paragraph for these figures."""
    lines = ["| clients | plain HTTP (writes/s) | HTTPS + mutual TLS (writes/s) | TLS / plain | leader CPU plain / TLS |",
             "|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['clients']} | {r['plain']['rps']:.0f} | {r['tls']['rps']:.0f} | {r['ratio']:.2f} | "
                     f"{r['leader_cpu']['plain']:.2f} / {r['leader_cpu']['tls']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    a = p.parse_args(argv)
    cfg = argparse.Namespace(repeats=1 if a.smoke else 3, duration=1 if a.smoke else 3,
                             clients=(16,) if a.smoke else (1, 16, 64))
    result = section(cfg)
    print(readme_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
