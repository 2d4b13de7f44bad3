"""The legacy key-value endpoints of the original service: POST /set, GET /jobs, GET /jobs/<key>."""
from __future__ import annotations

import json

import orjson
from flask import Blueprint, request

from api_common import (MAX_BODY, NEXT_OFFSET_HEADER, TOTAL_HEADER, BadRequest, ctx, encode_page, error,
                        json_object, json_response, list_page, page_args, read)
from api_tasks import contract_write
from auth import requires
from cluster_manager import MAX_COMMAND_DEPTH

MAX_KEY = 500
MAX_DEPTH = MAX_COMMAND_DEPTH - 1  # nesting levels of a /set value, which sits one level inside its command
MAX_VALUE_BYTES = MAX_BODY  # a /set value once encoded (floats like 1e9 grow when re-encoded)
INT_MIN, INT_MAX = -2**63, 2**63 - 1

bp = Blueprint("kv", __name__)


def check_value(value, depth: int = 1) -> bool:
    """Refuse what could not be stored exactly or encoded: nesting deeper than MAX_DEPTH and
    integers outside the signed 64-bit range. Returns True when `value` holds a float of
    magnitude 2**63 or more: orjson parses integer literals beyond 64 bits as floats, so such a
    float may be a rounded integer, and the caller must look at the literal."""
    kind = type(value)
    if kind is dict:
        items = value.values()
    elif kind is list:
        items = value
    else:
        items = (value,)
        depth = 0
    if depth > MAX_DEPTH:
        raise BadRequest(f"'value' nests deeper than {MAX_DEPTH} levels")
    huge = False
    for item in items:
        kind = type(item)
        if kind is int:
            if not INT_MIN <= item <= INT_MAX:
                raise BadRequest(f"integers must be between {INT_MIN} and {INT_MAX}")
        elif kind is float:
            huge = huge or abs(item) >= 2.0**63
        elif kind is dict or kind is list:
            huge = check_value(item, depth + 1) or huge
    return huge


def check_integer_literals(raw: bytes) -> None:
    """Refuse a body with an integer literal outside the signed 64-bit range (orjson would have
    made it a float). Only called when a huge float was seen, so the slower parser is rare."""
    def parse_int(literal: str) -> int:
        try:
            number = int(literal)
        except ValueError:  # more digits than Python converts
            number = INT_MAX + 1
        if not INT_MIN <= number <= INT_MAX:
            raise BadRequest(f"integers must be between {INT_MIN} and {INT_MAX}")
        return number
    json.loads(raw, parse_int=parse_int)


@bp.post("/set")
@requires("write")
def set_value():
    body = json_object()
    unknown = sorted(set(body) - {"key", "value"})
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(unknown)}; allowed: key, value")
    key = body.get("key")
    if not isinstance(key, str) or not key:
        raise BadRequest("'key' must be a non-empty string")
    if len(key) > MAX_KEY:
        raise BadRequest(f"'key' is longer than {MAX_KEY} characters")
    if "value" not in body:
        raise BadRequest("field 'value' is required")
    value = body["value"]
    if check_value(value):
        check_integer_literals(request.get_data(cache=True))
    size = len(orjson.dumps(value))
    if size > MAX_VALUE_BYTES:
        raise BadRequest(f"'value' encodes to {size} bytes, more than {MAX_VALUE_BYTES}", 413,
                         "request_entity_too_large")
    return contract_write(lambda: {"op": "set", "key": key, "value": value}, body)


@bp.get("/jobs")
@requires("read")
def jobs():
    limit, offset = page_args()

    def build():
        items, total = ctx().node.state.list_kv(limit, offset)
        pieces, count = encode_page(items, lambda batch: orjson.dumps(dict(batch))[1:-1])
        headers = {TOTAL_HEADER: str(total)}
        if offset + count < total:
            headers[NEXT_OFFSET_HEADER] = str(offset + count)
        pieces.insert(0, b"{")
        pieces.append(b"}")
        return pieces, headers
    return read(lambda: list_page(build))


@bp.get("/jobs/<anypath:key>")
@requires("read")
def job(key):
    def serve():
        missing = object()
        value = ctx().node.state.get_kv(key, missing)
        if value is missing:
            return error(404, "not_found", f"key {key} does not exist")
        return json_response({"key": key, "value": value})
    return read(serve)
