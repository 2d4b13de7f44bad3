"""Operations: Prometheus metrics (GET /metrics), health probes (GET /livez, /readyz) and online
backups (GET /cluster/backup). Metrics are defined in metrics.py, the backup format in backup.py.

Probes are open (orchestrators and load balancers carry no token). /readyz answers 200 when the
node knows a leader and has applied everything that leader had committed when it last heard from
it; else 503 `no_leader` or `catching_up`. `?noleader` drops the leader condition (rqlite's
`/readyz?noleader`): a node cut off from the leader, but caught up, is then ready.

A backup is served like a linearizable read: the leader passes a read barrier (so the backup holds
every write acknowledged before it was asked for), a follower forwards to the leader, and
`?consistency=stale` serves this node's own applied state at once. Either way it is the state at
one applied (committed) index, copied under the state machine's lock and encoded off it.
"""
from __future__ import annotations

import threading

from flask import Blueprint, Response, current_app, request

from api_common import SEND_CHUNK, Slot, ctx, error, json_response, read
from auth import open_route, requires
from backup import backup_checksum, encode_backup
from cluster_manager import ClientError
from metrics import leader_known

BACKUP_SLOTS = 1  # backups encoded or sent at once per node (each holds a full encoded copy of the state)
BACKUP_SLOTS_KEY = "pickledb.backup_slots"  # in app.extensions
BACKUP_INDEX_HEADER = "X-PickleDB-Backup-Index"
BACKUP_SHA256_HEADER = "X-PickleDB-Backup-SHA256"
CLUSTER_HEADER = "X-PickleDB-Cluster"

bp = Blueprint("ops", __name__)


@bp.record_once
def set_up(state) -> None:
    state.app.extensions[BACKUP_SLOTS_KEY] = threading.BoundedSemaphore(BACKUP_SLOTS)


@bp.get("/metrics")
@requires("read")
def metrics():
    body, content_type = ctx().node.metrics.render(request.headers.get("Accept"))
    return Response(body, content_type=content_type)


@bp.get("/livez")
@open_route
def livez():
    return json_response({"status": "alive"})


@bp.get("/readyz")
@open_route
def readyz():
    node = ctx().node
    view = node.status()
    leader_commit = view["leader_commit"]  # as last heard from the leader (a leader's own)
    applied = view["applied_index"]
    facts = f"applied index {applied}, leader's commit index {leader_commit}"
    if not leader_known(node, view) and "noleader" not in request.args:
        return error(503, "no_leader", f"this node knows no leader ({facts})", retry_after=1)
    if applied < leader_commit:
        return error(503, "catching_up", f"this node has not applied what the leader committed ({facts})",
                     retry_after=1)
    return json_response({"status": "ready", "leader": view["leader"], "applied_index": applied,
                          "leader_commit": leader_commit})


@bp.get("/cluster/backup")
@requires("admin")
def cluster_backup():
    return read(serve_backup)


def serve_backup() -> Response:
    node, backup_slots = ctx().node, current_app.extensions[BACKUP_SLOTS_KEY]
    if not backup_slots.acquire(blocking=False):
        raise ClientError(503, "busy", "another backup is being taken on this node; retry shortly", retry_after=1)
    slot = Slot(backup_slots)  # held until the response is closed: one encoded copy in memory at a time
    try:
        index, term, state = node.state.snapshot()  # a consistent copy, taken under the state's lock
        view = node.status()
        cluster_id = view["cluster_id"]
        data = encode_backup(index, term, state, cluster_id, view["members"])
    except BaseException:
        slot.release()
        raise
    headers = {"Content-Length": str(len(data)), BACKUP_INDEX_HEADER: str(index),
               BACKUP_SHA256_HEADER: backup_checksum(data),
               "Content-Disposition": f'attachment; filename="pickledb-backup-{index}.json"'}
    if cluster_id is not None:  # None only on a joining node that has not heard from the leader
        headers[CLUSTER_HEADER] = cluster_id
    buffer = memoryview(data)
    response = Response((bytes(buffer[start:start + SEND_CHUNK]) for start in range(0, len(data), SEND_CHUNK)),
                        headers=headers, mimetype="application/json")
    response.call_on_close(slot.release)
    return response
