"""Tasks: the service's main resource (list, read, create, update, delete)."""
from __future__ import annotations

import uuid

import orjson
from flask import Blueprint

from api_common import (BadRequest, ctx, encode_page, error, json_object, json_response, list_page, now_iso,
                        page_args, read, write)
from auth import requires

MAX_TITLE = 500
MAX_DESCRIPTION = 10_000
MAX_TASK_ID = 64  # ids are 32 hex digits: a longer one names no task, so nothing is replicated
TASK_FIELDS = {"title", "description", "completed"}

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
        return json_response(task)
    return read(serve)


@bp.post("/tasks")
@requires("write")
def create_task():
    body = validate_task_fields(json_object(), creating=True)
    return write(lambda: {"op": "create", "task": new_task(body)})


@bp.put("/tasks/<task_id>")
@requires("write")
def update_task(task_id):
    body = validate_task_fields(json_object(), creating=False)
    if len(task_id) > MAX_TASK_ID:
        return no_such_task(task_id[:MAX_TASK_ID] + "...")
    return write(lambda: {"op": "update", "id": task_id, "fields": body, "updated_at": now_iso()})


@bp.delete("/tasks/<task_id>")
@requires("write")
def delete_task(task_id):
    if len(task_id) > MAX_TASK_ID:
        return no_such_task(task_id[:MAX_TASK_ID] + "...")
    return write(lambda: {"op": "delete", "id": task_id})
