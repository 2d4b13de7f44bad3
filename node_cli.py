"""Command line for one node: the flags shared by demo_cluster.py, demo_follower.py and run_cluster.sh."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys

from waitress import create_server

DEFAULT_PORTS = (4000, 4001, 4002)
SERVER_THREADS = 48  # client requests block while their write commits; SSE streams hold one each
CONNECTION_LIMIT = 500  # clients, peers' forwarding pools and SSE streams; waitress's default is 100


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_args(argv, default_port: int):
    p = argparse.ArgumentParser(description="Run one PickleDB Cluster node.")
    p.add_argument("--port", type=int, default=default_port, help=f"HTTP port (default {default_port})")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on and to be known by (default 127.0.0.1)")
    p.add_argument("--peers", default=None,
                   help="comma-separated base URLs of the other nodes (default: the other two of 4000-4002)")
    p.add_argument("--data-dir", default=None, help="data directory (default data/node_<port>)")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds between leader heartbeats (default 2)")
    p.add_argument("--election-timeout", type=float, default=5.0,
                   help="a node that hears no leader for a random time in [T, 2T) stands for election (default 5)")
    p.add_argument("--cluster-secret", default=os.environ.get("PICKLEDB_CLUSTER_SECRET"),
                   help="shared secret for node-to-node requests (default: $PICKLEDB_CLUSTER_SECRET)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error("--port must be between 1 and 65535")
    if args.heartbeat_interval <= 0 or args.election_timeout <= 0:
        p.error("--heartbeat-interval and --election-timeout must be positive")
    if args.election_timeout < 2 * args.heartbeat_interval:
        p.error("--election-timeout must be at least twice --heartbeat-interval")
    if args.peers is None:
        if args.port not in DEFAULT_PORTS:
            p.error(f"--peers is required when --port is not one of {DEFAULT_PORTS}")
        args.peers = ",".join(f"http://{args.host}:{q}" for q in DEFAULT_PORTS if q != args.port)
    args.peer_list = [u.strip().rstrip("/") for u in args.peers.split(",") if u.strip()]
    for url in args.peer_list:
        if not url.startswith("http://"):
            p.error(f"peer URL {url!r} must look like http://HOST:PORT")
    if not is_loopback(args.host) and not args.cluster_secret:
        p.error("refusing to listen on a non-loopback address without --cluster-secret")
    return args


def main(argv=None, default_port: int = 4001, first_election_factor: float | None = None) -> int:
    from api_server import create_app
    from cluster_manager import Node, NodeConfig
    from storage import StorageError

    args = parse_args(sys.argv[1:] if argv is None else argv, default_port)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{args.port}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    config = NodeConfig(
        host=args.host, port=args.port, peers=args.peer_list,
        data_dir=args.data_dir or os.path.join("data", f"node_{args.port}"),
        heartbeat_interval=args.heartbeat_interval, election_timeout=args.election_timeout,
        first_election_timeout=(args.election_timeout * first_election_factor if first_election_factor else None),
        cluster_secret=args.cluster_secret,
        snapshot_every=int(os.environ.get("PICKLEDB_SNAPSHOT_EVERY", "10000")))
    try:
        node = Node(config)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        server = create_server(create_app(node), host=args.host, port=args.port, threads=SERVER_THREADS,
                               connection_limit=CONNECTION_LIMIT, channel_timeout=60, ident="pickledb-cluster")
    except OSError as exc:
        node.storage.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2

    def shut_down(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, shut_down)
    node.start()
    logging.getLogger("pickledb_cluster.node").info(
        "node %s serving (peers: %s; data: %s)", config.url, ", ".join(config.peers) or "none", config.data_dir)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        node.begin_shutdown()
        server.close()
        node.stop()
        logging.getLogger("pickledb_cluster.node").info("node %s stopped", config.url)
    return 0
