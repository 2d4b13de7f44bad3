"""Command line for one node: the flags shared by demo_cluster.py, demo_follower.py and run_cluster.sh."""
from __future__ import annotations

import argparse
import dataclasses
import hmac
import ipaddress
import logging
import math
import os
import signal
import sys
import unicodedata
from urllib.parse import urlsplit

from http_server import HTTPServer, Limits

DEFAULT_PORTS = (4000, 4001, 4002)
LIMITS = Limits()
SERVER_THREADS = LIMITS.client_threads
CONNECTION_LIMIT = LIMITS.client_connections
SNAPSHOT_PATH = "/raft/snapshot"


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
    p.add_argument("--cluster-secret", default=os.environ.get("PICKLEDB_CLUSTER_SECRET") or None,
                   help="shared secret for node-to-node requests (default: $PICKLEDB_CLUSTER_SECRET; "
                        "an empty variable counts as unset)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error("--port must be between 1 and 65535")
    if not all(math.isfinite(t) and t > 0 for t in (args.heartbeat_interval, args.election_timeout)):
        p.error("--heartbeat-interval and --election-timeout must be positive numbers")
    if args.election_timeout < 2 * args.heartbeat_interval:
        p.error("--election-timeout must be at least twice --heartbeat-interval")
    if args.peers is None:
        if args.port not in DEFAULT_PORTS:
            p.error(f"--peers is required when --port is not one of {DEFAULT_PORTS}")
        args.peers = ",".join(f"http://{args.host}:{q}" for q in DEFAULT_PORTS if q != args.port)
    args.peer_list = [u.strip().rstrip("/") for u in args.peers.split(",") if u.strip()]
    for url in args.peer_list:
        if not valid_peer_url(url):
            p.error(f"peer URL {url!r} must look like http://HOST:PORT (port 1-65535, nothing after it)")
    if len(set(args.peer_list)) != len(args.peer_list):
        p.error("--peers lists a URL twice")
    if f"http://{args.host}:{args.port}" in args.peer_list:
        p.error(f"--peers must list the other nodes, not this one (http://{args.host}:{args.port})")
    if args.cluster_secret is not None:
        problem = secret_problem(args.cluster_secret)
        if problem:
            p.error(f"--cluster-secret (or $PICKLEDB_CLUSTER_SECRET) {problem}")
    if not is_loopback(args.host) and not args.cluster_secret:
        p.error("refusing to listen on a non-loopback address without --cluster-secret")
    return args


def valid_peer_url(url: str) -> bool:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:  # not a number, or out of range
        return False
    # A node's identity is exactly http://HOST:PORT: anything after it would never match.
    return (parts.scheme == "http" and bool(parts.hostname) and port is not None and 0 < port
            and not (parts.path or parts.query or parts.fragment or parts.username or parts.password)
            and "#" not in url and "?" not in url)  # an empty query or fragment too


def secret_problem(secret: str) -> str | None:
    """Why the secret cannot travel in an HTTP header, or None. It is sent as UTF-8; header
    values cannot hold control characters, and parsers strip surrounding spaces."""
    if not secret:
        return "must not be empty"
    if any(unicodedata.category(ch) == "Cc" for ch in secret):
        return "must not contain control characters (CR, LF, tab, NUL and the like)"
    if secret != secret.strip(" "):
        return "must not start or end with a space"
    try:
        secret.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def describe(exc: OSError) -> str:
    text = exc.strerror or str(exc)
    return f"{text}: {exc.filename}" if exc.filename else text


def peer_auth(secret: str | None):
    """Recognises a node-to-node request by its secret header, for the server's routing and body
    caps (the RPC layer checks it again)."""
    if not secret:
        return None
    from transport import SECRET_HEADER, secret_token
    key, expected = SECRET_HEADER.upper().replace("-", "_"), secret_token(secret).encode()

    def authentic(headers: dict) -> bool:
        given = headers.get(key)
        return given is not None and hmac.compare_digest(given.encode("latin-1"), expected)
    return authentic


def peer_routes() -> dict[str, int]:
    """Body caps of the node-to-node paths; those requests run on the server's peer pool."""
    from transport import MAX_PEER_MESSAGE, MAX_SNAPSHOT_BODY, RAFT_PATHS
    return {path: MAX_SNAPSHOT_BODY if path == SNAPSHOT_PATH else MAX_PEER_MESSAGE for path in RAFT_PATHS}


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None, default_port: int = 4001, first_election_factor: float | None = None) -> int:
    from api_common import MAX_BODY
    from api_server import create_app
    from cluster_manager import Node, NodeConfig
    from storage import StorageError

    args = parse_args(sys.argv[1:] if argv is None else argv, default_port)
    snapshot_every = os.environ.get("PICKLEDB_SNAPSHOT_EVERY", "10000")
    if not (snapshot_every.isdigit() and int(snapshot_every) > 0):
        return fail(f"PICKLEDB_SNAPSHOT_EVERY must be a positive integer, not {snapshot_every!r}")
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{args.port}] %(levelname)s %(name)s: %(message)s")
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    config = NodeConfig(
        host=args.host, port=args.port, peers=args.peer_list,
        data_dir=args.data_dir or os.path.join("data", f"node_{args.port}"),
        heartbeat_interval=args.heartbeat_interval, election_timeout=args.election_timeout,
        first_election_timeout=(args.election_timeout * first_election_factor if first_election_factor else None),
        cluster_secret=args.cluster_secret,
        snapshot_every=int(snapshot_every))
    try:
        node = Node(config)
    except StorageError as exc:
        return fail(str(exc))
    except OSError as exc:  # read-only, not a directory, disk full...
        return fail(f"cannot use data directory {config.data_dir}: {describe(exc)}")
    try:
        server = HTTPServer(create_app(node), args.host, args.port, peer_routes(),
                            limits=dataclasses.replace(LIMITS, client_body=MAX_BODY),
                            peer_auth=peer_auth(args.cluster_secret), on_stop=node.begin_shutdown)
    except (OSError, ValueError) as exc:  # in use, not an address of this machine
        node.storage.close()
        reason = describe(exc) if isinstance(exc, OSError) else str(exc)
        return fail(f"cannot listen on {args.host}:{args.port}: {reason}")

    def shut_down(signum, frame):
        server.stop()
    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    node.start()
    logging.getLogger("pickledb_cluster.node").info(
        "node %s serving (peers: %s; data: %s)", config.url, ", ".join(config.peers) or "none", config.data_dir)
    try:
        server.serve_forever()
    finally:
        node.stop()
        logging.getLogger("pickledb_cluster.node").info("node %s stopped", config.url)
    return 0
