"""Views of the node and the cluster (/health, /status, /heartbeat, /cluster/status) and the
membership admin API (/cluster/members, /cluster/leader). Changes run on the leader (a follower
forwards them) and answer once committed: 409 change_in_progress, 404 unknown_member,
409 last_voter, 409 url_in_use, 400 invalid_request, 503 no_leader / not_committed /
transfer_failed."""
from __future__ import annotations

import requests
from flask import Blueprint, request
from urllib.parse import urlsplit

from api_common import BadRequest, ctx, forward, json_object, json_response
from auth import open_route, requires
from cluster_manager import NODE_ID, valid_peer_url

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

    members = {m["id"]: m for m in me["members"]} or {node.id: {"id": node.id, "url": node.url, "role": None}}

    def fetch(member):
        url = member["url"]
        try:
            resp = c.peers_http.get(node.url_routes.get(url, url) + "/status", headers={"Host": urlsplit(url).netloc},
                                    timeout=max(0.3, min(1.0, node.config.election_timeout)))
            return resp.json() if resp.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None
    others = [m for i, m in members.items() if i != node.id]
    views = dict(zip((m["id"] for m in others), c.status_pool.map(fetch, others)))
    views[node.id] = me
    top = max(v.get("commit_index", 0) for v in views.values() if v)
    nodes = []
    for node_id in sorted(views):
        v, member = views[node_id], members[node_id]
        # role: raft role (leader/follower/candidate) or "unreachable"; member_role: voter|learner.
        # lag: entries the node has yet to apply, against the highest commit index seen;
        # replication_lag (leader's view only): entries of the leader's log it has not yet stored.
        entry = {"id": node_id, "url": member["url"], "member_role": member["role"],
                 "reachable": v is not None, "self": node_id == node.id}
        if v is not None:
            entry.update(role=v["role"], is_leader=v["is_leader"], term=v["term"], leader=v["leader"],
                         commit_index=v["commit_index"], applied_index=v["applied_index"],
                         lag=max(0, top - v["applied_index"]), cluster_id=v.get("cluster_id"),
                         cluster_mismatch=v.get("cluster_mismatch"), peers_mismatch=v.get("peers_mismatch"),
                         config_index=v.get("config_index"))
        else:
            entry.update(role="unreachable", is_leader=False, lag=None)
        if node_id in me["peers"]:
            entry["match_index"] = me["peers"][node_id]["match_index"]
            entry["replication_lag"] = me["peers"][node_id]["lag"]
        nodes.append(entry)
    leader = next((n["id"] for n in nodes if n.get("is_leader")), me["leader"])
    voters = sum(1 for m in members.values() if m["role"] == "voter")
    return json_response({**me, "cluster_leader": leader, "cluster_size": len(nodes),
                          "quorum": voters // 2 + 1, "nodes": nodes})


# ------------------------------------------------------------------ membership admin
def on_leader(serve):
    """Run a membership operation on the leader: a follower forwards it."""
    node = ctx().node
    if node.core.role != "leader":
        return forward()
    return serve(node)


@bp.get("/cluster/members")
@requires("read")
def list_members():
    return json_response(ctx().node.members_view())


@bp.post("/cluster/members")
@requires("admin")
def add_member():
    body = json_object()
    url, node_id, learner = body.get("url"), body.get("id"), body.get("learner", False)
    scheme = urlsplit(ctx().node.url).scheme  # every member speaks what this node speaks (https with TLS)
    if not isinstance(url, str) or not valid_peer_url(url.rstrip("/"), scheme):
        raise BadRequest(f"'url' must be a URL like {scheme}://HOST:PORT")
    url = url.rstrip("/")
    if node_id is None:
        node_id = urlsplit(url).netloc
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise BadRequest("'id' must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    if not isinstance(learner, bool):
        raise BadRequest("'learner' must be true or false")

    def serve(node):
        status, member = node.add_member(node_id, url, learner)
        return json_response({"member": member}, status)
    return on_leader(serve)


@bp.delete("/cluster/members/<member_id>")
@requires("admin")
def remove_member(member_id):
    return on_leader(lambda node: json_response(node.remove_member(member_id)))


@bp.post("/cluster/leader")
@requires("admin")
def transfer_leader():
    body = json_object() if request.get_data(cache=True) else {}
    target = body.get("id")
    if target is not None and not (isinstance(target, str) and NODE_ID.fullmatch(target)):
        raise BadRequest("'id' must be a member id")
    return on_leader(lambda node: json_response(node.transfer_leader(target)))
