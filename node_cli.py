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
import threading
import unicodedata
from urllib.parse import urlsplit

import auth
import logs
import tls
from cluster_manager import NODE_ID, valid_peer_url
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
                   help="the other nodes of a NEW cluster, comma-separated, each URL or ID=URL (default: "
                        "the other two of 4000-4002); only read when the data dir is empty: afterwards "
                        "the membership lives in the raft log")
    p.add_argument("--node-id", default=None,
                   help="this node's stable id, [A-Za-z0-9._:-]{1,64} (default: HOST:PORT of its URL)")
    p.add_argument("--advertise-url", default=None,
                   help="the URL other nodes and clients reach this node at (default http://HOST:PORT); "
                        "give it when listening on 0.0.0.0")
    p.add_argument("--join", default=None,
                   help="comma-separated URLs of members of an existing cluster: an empty node asks them "
                        "to add it (as a voter once caught up); --peers is then ignored")
    p.add_argument("--learner", action="store_true",
                   help="with --join: stay a learner (receives the log, never votes) instead of becoming a voter")
    p.add_argument("--data-dir", default=None, help="data directory (default data/node_<port>)")
    p.add_argument("--heartbeat-interval", type=float, default=2.0, help="seconds between leader heartbeats (default 2)")
    p.add_argument("--election-timeout", type=float, default=5.0,
                   help="a node that hears no leader for a random time in [T, 2T) stands for election (default 5)")
    p.add_argument("--cluster-secret", default=os.environ.get("PICKLEDB_CLUSTER_SECRET") or None,
                   help="shared secret for node-to-node requests (default: $PICKLEDB_CLUSTER_SECRET; "
                        "an empty variable counts as unset)")
    auth.add_arguments(p)
    logs.add_arguments(p)
    tls.add_arguments(p)
    args = p.parse_args(argv)
    for problem in tls.validate(args):
        p.error(problem)
    scheme = tls.scheme(args)
    if not 0 < args.port < 65536:
        p.error("--port must be between 1 and 65535")
    if not all(math.isfinite(t) and t > 0 for t in (args.heartbeat_interval, args.election_timeout)):
        p.error("--heartbeat-interval and --election-timeout must be positive numbers")
    if args.election_timeout < 2 * args.heartbeat_interval:
        p.error("--election-timeout must be at least twice --heartbeat-interval")
    if args.advertise_url is not None:
        args.advertise_url = args.advertise_url.strip().rstrip("/")
        if not valid_peer_url(args.advertise_url, scheme):
            p.error(f"--advertise-url {args.advertise_url!r} must look like {scheme}://HOST:PORT")
    own_url = args.advertise_url or f"{scheme}://{args.host}:{args.port}"
    if args.node_id is not None and not NODE_ID.fullmatch(args.node_id):
        p.error("--node-id must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    own_id = args.node_id or urlsplit(own_url).netloc
    args.join_list = []
    if args.join is not None:
        args.join_list = [u.strip().rstrip("/") for u in args.join.split(",") if u.strip()]
        if not args.join_list:
            p.error("--join needs at least one member URL")
        for url in args.join_list:
            if not valid_peer_url(url, scheme):
                p.error(f"--join URL {url!r} must look like {scheme}://HOST:PORT")
        args.peers = args.peers or ""
    if args.learner and not args.join_list:
        p.error("--learner needs --join")
    if args.peers is None:
        if args.port not in DEFAULT_PORTS:
            p.error(f"--peers is required when --port is not one of {DEFAULT_PORTS}")
        args.peers = ",".join(f"{scheme}://{args.host}:{q}" for q in DEFAULT_PORTS if q != args.port)
    args.peer_list, args.peer_ids = [], []
    for item in (i.strip() for i in args.peers.split(",")):
        if not item:
            continue
        peer_id, sep, url = item.partition("=")
        if not sep:
            peer_id, url = "", item
        url = url.strip().rstrip("/")
        if not valid_peer_url(url, scheme):
            p.error(f"peer URL {url!r} must look like {scheme}://HOST:PORT (port 1-65535, nothing after it)")
        peer_id = peer_id.strip() or urlsplit(url).netloc
        if not NODE_ID.fullmatch(peer_id):
            p.error(f"peer id {peer_id!r} must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        args.peer_list.append(url)
        args.peer_ids.append(peer_id)
    if len(set(args.peer_list)) != len(args.peer_list):
        p.error("--peers lists a URL twice")
    if len(set(args.peer_ids)) != len(args.peer_ids):
        p.error("--peers lists an id twice")
    if own_url in args.peer_list or f"{scheme}://{args.host}:{args.port}" in args.peer_list:
        p.error(f"--peers must list the other nodes, not this one ({own_url})")
    if own_id in args.peer_ids:
        p.error(f"--peers must list the other nodes, not this one (id {own_id})")
    if args.cluster_secret is not None:
        problem = secret_problem(args.cluster_secret)
        if problem:
            p.error(f"--cluster-secret (or $PICKLEDB_CLUSTER_SECRET) {problem}")
    if not is_loopback(args.host) and not args.cluster_secret:
        p.error("refusing to listen on a non-loopback address without --cluster-secret")
    return args


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
    try:
        authenticator = auth.authenticator_from_args(args, loopback=is_loopback(args.host))
    except auth.AuthFileError as exc:
        return fail(str(exc))
    try:
        node_tls = tls.load(args)
    except tls.TLSError as exc:
        return fail(str(exc))
    try:
        logs.configure(args, label=str(args.port))
    except logs.LogSetupError as exc:
        return fail(str(exc))
    config = NodeConfig(
        host=args.host, port=args.port, peers=args.peer_list, peer_ids=args.peer_ids,
        node_id=args.node_id, advertise_url=args.advertise_url, join=args.join_list,
        join_as_learner=args.learner,
        data_dir=args.data_dir or os.path.join("data", f"node_{args.port}"),
        heartbeat_interval=args.heartbeat_interval, election_timeout=args.election_timeout,
        first_election_timeout=(args.election_timeout * first_election_factor if first_election_factor else None),
        cluster_secret=args.cluster_secret, tls=node_tls,
        snapshot_every=int(snapshot_every))
    try:
        node = Node(config)
    except StorageError as exc:
        return fail(str(exc))
    except OSError as exc:  # read-only, not a directory, disk full...
        return fail(f"cannot use data directory {config.data_dir}: {describe(exc)}")
    try:
        server = HTTPServer(create_app(node, authenticator=authenticator), args.host, args.port, peer_routes(),
                            limits=dataclasses.replace(LIMITS, client_body=MAX_BODY),
                            peer_auth=peer_auth(args.cluster_secret), on_stop=node.begin_shutdown,
                            tls=node_tls, on_response=node.metrics.on_response)
    except (OSError, ValueError) as exc:  # in use, not an address of this machine
        node.storage.close()
        reason = describe(exc) if isinstance(exc, OSError) else str(exc)
        return fail(f"cannot listen on {args.host}:{args.port}: {reason}")

    def shut_down(signum, frame):
        # A leader first hands leadership over (about one round trip for the cluster instead of
        # an election timeout), off the signal handler so the server keeps answering meanwhile.
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=lambda: (node.hand_over(), server.stop()), name="shutdown", daemon=True).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, shut_down)
    def reload(signum, frame):  # the token file and the certificate
        if authenticator is not None:
            authenticator.reload()
        if node_tls is not None:
            node_tls.reload_logged()
    signal.signal(signal.SIGHUP, reload)
    node.start()
    logging.getLogger("pickledb_cluster.node").info(
        "node %s serving at %s (listening on %s:%d; data: %s)", node.id, node.url, args.host, args.port, config.data_dir)
    try:
        server.serve_forever()
    finally:
        node.stop()
        logging.getLogger("pickledb_cluster.node").info("node %s stopped", node.id)
    return 0
