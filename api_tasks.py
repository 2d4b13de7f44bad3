"""Tasks: the service's main resource (list, read, create, update, delete), and the write
contract the key-value writes share: Idempotency-Key, If-Match, ETag.

Idempotency-Key (POST /tasks, PUT and DELETE /tasks/<id>, POST /set): 1-255 printable ASCII
characters, bare or as a quoted string. The key travels in the command with a fingerprint of the
request (method, path, If-Match, canonical JSON body) and the state machine decides at apply time
(task_state.py): a repeat gets the first answer, marked `Idempotent-Replayed: true`; a repeat of a
key already applied is answered by the leader from its table without a new entry. A repeat still
in flight commits as a second entry, which returns the first one's answer: it waits, never 409.
If-Match (PUT, DELETE): `*` or a list of entity tags; a task's tag is `"<version>"`. Checked at
apply time; a mismatch is 412 precondition_failed with the current task under "current".
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid

import orjson
from flask import Blueprint, Response, request

from api_common import (BadRequest, ctx, encode_page, error, forward, json_object, json_response, list_page,
                        now_iso, page_args, read)
from auth import requires
from task_state import Replayed

MAX_TITLE = 500
MAX_DESCRIPTION = 10_000
MAX_TASK_ID = 64  # ids are 32 hex digits: a longer one names no task, so nothing is replicated
TASK_FIELDS = {"title", "description", "completed"}
MAX_IDEMPOTENCY_KEY = 255
MAX_IF_MATCH_TAGS = 32
ENTITY_TAG = re.compile(r'(W/)?"([\x21\x23-\x7e]*)"')  # RFC 9110 entity-tag
VERSION_TAG = re.compile(r"[1-9][0-9]{0,17}")

bp = Blueprint("tasks", __name__)


def new_task(fields: dict) -> dict:
    """A task document for validated create fields; its id and timestamps are chosen here,
    once, before the entry is proposed, so every replica stores identical data."""
    stamp = now_iso()
    return {"id": uuid.uuid4().hex, "title": fields["title"], "description": fields.get("description", ""),
            "completed": fields.get("completed", False), "created_at": stamp, "updated_at": stamp,
            "version": 1}


def validate_task_fields(body: dict, *, creating: bool) -> dict:
    unknown = sorted(set(body) - TASK_FIELDS)
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: title, description, completed")
    if creating and "title" not in body:
        raise BadRequest("field 'title' is required")
    if not creating and not body:
        raise BadRequest("nothing to update: give at least one of title, description, completed")
    if "title" in body:
        title = body["title"]
        if not isinstance(title, str) or not title.strip():
            raise BadRequest("'title' must be a non-empty string")
        if len(title) > MAX_TITLE:
            raise BadRequest(f"'title' is longer than {MAX_TITLE} characters")
    if "description" in body:
        desc = body["description"]
        if not isinstance(desc, str):
            raise BadRequest("'description' must be a string")
        if len(desc) > MAX_DESCRIPTION:
            raise BadRequest(f"'description' is longer than {MAX_DESCRIPTION} characters")
    if "completed" in body and not isinstance(body["completed"], bool):
        raise BadRequest("'completed' must be true or false")
    return body


def no_such_task(task_id):
    return error(404, "not_found", f"task {task_id} does not exist")


def etag(task: dict) -> str:
    return f'"{task["version"]}"'


def idempotency_key() -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw  # the draft's sf-string form
    # isascii() and isprintable(): " " to "~" (a generator over the characters cost 3 us a write)
    if not 1 <= len(key) <= MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        raise BadRequest(f"'Idempotency-Key' must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters")
    return key


def if_match() -> str | list[int] | None:
    """The versions If-Match accepts: "*", a list (possibly empty: no tag names a version; a weak
    tag never matches, RFC 9110 strong comparison), or None without the header."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    if raw.strip() == "*":
        return "*"
    tags = [tag.strip() for tag in raw.split(",")]
    if len(tags) > MAX_IF_MATCH_TAGS:
        raise BadRequest(f"'If-Match' lists more than {MAX_IF_MATCH_TAGS} entity tags")
    versions = []
    for tag in tags:
        match = ENTITY_TAG.fullmatch(tag)
        if match is None:
            raise BadRequest("'If-Match' must be * or a list of entity tags such as \"3\"")
        if not match.group(1) and VERSION_TAG.fullmatch(match.group(2)):
            versions.append(int(match.group(2)))
    return versions


def fingerprint(body, expected) -> str:
    """What makes two requests with one Idempotency-Key the same request."""
    req = request._get_current_object()  # each use of the proxy costs about 1 us
    digest = hashlib.sha256(f"{req.method} {req.path}\n".encode())
    digest.update(orjson.dumps([body, expected], option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()[:32]


def answer(result) -> Response:
    status, body = result
    headers = {}
    current = body.get("current") if status == 412 and isinstance(body, dict) else body
    if isinstance(current, dict) and "version" in current and "id" in current:
        headers["ETag"] = etag(current)
    if isinstance(result, Replayed):
        headers["Idempotent-Replayed"] = "true"
    return json_response(body, status, headers)


def contract_write(build_command, body=None, expected=None):
    """Propose a write on the leader (a follower forwards it) under the request's
    Idempotency-Key and If-Match (`expected`, from if_match()); answer with its ETag."""
    key = idempotency_key()
    node = ctx().node
    if node.core.role != "leader":
        return forward()
    command = build_command()
    if expected is not None:
        command["if_match"] = expected
    if key is None:
        return answer(node.propose(command))
    request_print = fingerprint(body, expected)
    stored = node.state.stored_answer(key, request_print)
    if stored is None:  # the leader's clock dates the key (task_state.py: the forgetting rule)
        command["idem"] = {"key": key, "fp": request_print, "at": round(time.time(), 3)}
        stored = node.propose(command)
    return answer(stored)


@bp.get("/tasks")
@requires("read")
def list_tasks():
    limit, offset = page_args()

    def build():
        tasks, total, index = ctx().node.state.list_tasks(limit, offset)
        pieces, count = encode_page(tasks, lambda batch: orjson.dumps(batch)[1:-1])
        after = offset + count
        tail = orjson.dumps({"total": total, "index": index, "next_offset": after if after < total else None})
        pieces.insert(0, b'{"tasks":[')
        pieces.append(b"]," + tail[1:])
        return pieces, {}
    return read(lambda: list_page(build))


@bp.get("/tasks/<task_id>")
@requires("read")
def get_task(task_id):
    def serve():
        task = ctx().node.state.get_task(task_id)
        if task is None:
            return no_such_task(task_id)
        return json_response(task, headers={"ETag": etag(task)})
    return read(serve)


@bp.post("/tasks")
@requires("write")
def create_task():
    body = validate_task_fields(json_object(), creating=True)
    return contract_write(lambda: {"op": "create", "task": new_task(body)}, body)


def unknown_task(task_id, expected):
    """The answer for an id too long to name any task, without replicating anything."""
    shown = task_id[:MAX_TASK_ID] + "..."
    if expected is not None:
        return json_response({"error": "precondition_failed", "current": None,
                              "message": f"task {shown} does not exist"}, 412)
    return no_such_task(shown)


@bp.put("/tasks/<task_id>")
@requires("write")
def update_task(task_id):
    body = validate_task_fields(json_object(), creating=False)
    expected = if_match()
    if len(task_id) > MAX_TASK_ID:
        return unknown_task(task_id, expected)
    return contract_write(lambda: {"op": "update", "id": task_id, "fields": body, "updated_at": now_iso()},
                          body, expected)


@bp.delete("/tasks/<task_id>")
@requires("write")
def delete_task(task_id):
    expected = if_match()
    if len(task_id) > MAX_TASK_ID:
        return unknown_task(task_id, expected)
    return contract_write(lambda: {"op": "delete", "id": task_id}, None, expected)
