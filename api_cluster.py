"""Views of the node and the cluster: /health, /status, /heartbeat, /cluster/status."""
from __future__ import annotations

import requests
from flask import Blueprint
from urllib.parse import urlsplit

from api_common import ctx, json_response
from auth import open_route, requires

bp = Blueprint("cluster", __name__)


@bp.get("/health")
@open_route
def health():
    view = ctx().node.status()
    view["status"] = "ok"
    return json_response(view)


@bp.get("/status")
@requires("read")
def status():
    return json_response(ctx().node.status())


@bp.get("/heartbeat")
@requires("read")
def heartbeat_info():
    view = ctx().node.status()
    return json_response({k: view[k] for k in ("node_id", "role", "term", "leader", "commit_index")})


@bp.get("/cluster/status")
@requires("read")
def cluster_status():
    c = ctx()
    node = c.node
    me = node.status()

    def fetch(peer):
        try:
            resp = c.peers_http.get(node.routes.get(peer, peer) + "/status", headers={"Host": urlsplit(peer).netloc},
                                    timeout=max(0.3, min(1.0, node.config.election_timeout)))
            return resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None
    views = dict(zip(node.config.peers, c.status_pool.map(fetch, node.config.peers)))
    views[node.id] = me
    top = max(v.get("commit_index", 0) for v in views.values() if v)
    nodes = []
    for url in sorted(views):
        v = views[url]
        entry = {"url": url, "reachable": v is not None, "self": url == node.id}
        if v is not None:
            entry.update(role=v["role"], is_leader=v["is_leader"], term=v["term"], leader=v["leader"],
                         commit_index=v["commit_index"], applied_index=v["applied_index"],
                         lag=max(0, top - v["applied_index"]))
        else:
            entry.update(role="unreachable", is_leader=False, lag=None)
        if url in me["peers"]:
            entry["match_index"] = me["peers"][url]["match_index"]
            entry["replication_lag"] = me["peers"][url]["lag"]
        nodes.append(entry)
    leader = next((n["url"] for n in nodes if n.get("is_leader")), me["leader"])
    return json_response({**me, "cluster_leader": leader, "cluster_size": len(nodes),
                          "quorum": len(nodes) // 2 + 1, "nodes": nodes})
