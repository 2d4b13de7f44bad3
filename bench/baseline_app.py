#!/usr/bin/env python3
"""The stack limit: the same `POST /tasks` and `GET /tasks/<id>` as a node, on the same stack
(Flask + flask-cors + orjson, served by waitress with node_cli.SERVER_THREADS threads), but in
one process with no disk and no replication. Request validation and the task document are
built by the node's own code (api_server), so the baseline tracks the product's per-request
cost; only the Raft/WAL path is left out.

    python bench/baseline_app.py --port 4100
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from flask import Flask  # noqa: E402
from flask_cors import CORS  # noqa: E402
from waitress import create_server  # noqa: E402

from api_common import MAX_BODY, BadRequest, error, json_object, json_response  # noqa: E402
from api_tasks import new_task, validate_task_fields  # noqa: E402
import node_cli  # noqa: E402
from node_cli import SERVER_THREADS  # noqa: E402

# Same waitress settings as node_cli.main (connection_limit where the node sets one).
SERVER_OPTIONS = {"threads": SERVER_THREADS, "channel_timeout": 60, "ident": "pickledb-cluster"}
if hasattr(node_cli, "CONNECTION_LIMIT"):
    SERVER_OPTIONS["connection_limit"] = node_cli.CONNECTION_LIMIT


def create_app(origin: str) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    CORS(app, origins=[origin], expose_headers=["Retry-After"])
    tasks: dict[str, dict] = {}
    lock = threading.Lock()

    @app.errorhandler(BadRequest)
    def bad_request(exc: BadRequest):
        return error(exc.status, exc.code, exc.message)

    @app.post("/tasks")
    def create_task():
        task = new_task(validate_task_fields(json_object(), creating=True))
        with lock:
            tasks[task["id"]] = task
        return json_response(task, 201)

    @app.get("/tasks/<task_id>")
    def get_task(task_id):
        with lock:
            task = tasks.get(task_id)
        if task is None:
            return error(404, "not_found", f"task {task_id} does not exist")
        return json_response(task)

    @app.get("/status")
    def status():
        with lock:
            return json_response({"role": "baseline", "tasks": len(tasks)})

    return app


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    server = create_server(create_app(f"http://{args.host}:{args.port}"), host=args.host, port=args.port,
                           **SERVER_OPTIONS)

    def shut_down(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, shut_down)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
