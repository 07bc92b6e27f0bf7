"""Reading JSON request bodies: every wrong shape is a `BadRequestError` naming the field."""

from __future__ import annotations

import json
import math
from typing import Any

from trio_gateway.errors import BadRequestError

JsonObject = dict[str, Any]


def json_object(body: bytes, *, empty_ok: bool = False) -> JsonObject:
    if not body.strip():
        if empty_ok:
            return {}
        raise BadRequestError("body: expected a JSON object, got an empty body")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"body: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"body: expected a JSON object, got {type(data).__name__}")
    return data


def _kind(value: object) -> str:
    return "null" if value is None else type(value).__name__


def req_str(data: JsonObject, key: str, where: str | None = None) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        got = "missing" if key not in data else f"got {_kind(value)}"
        raise BadRequestError(f"{where or key}: expected a non-empty string, {got}")
    return value


def opt_str(data: JsonObject, key: str, where: str | None = None) -> str | None:
    if data.get(key) is None:
        return None
    return req_str(data, key, where)


def req_obj(data: JsonObject, key: str) -> JsonObject:
    value = data.get(key)
    if not isinstance(value, dict):
        got = "missing" if key not in data else f"got {_kind(value)}"
        raise BadRequestError(f"{key}: expected a JSON object, {got}")
    return value


def opt_bool(data: JsonObject, key: str) -> bool | None:
    value = data.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequestError(f"{key}: expected true or false, got {_kind(value)}")
    return value


def opt_number(data: JsonObject, key: str) -> float | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequestError(f"{key}: expected a number, got {_kind(value)}")
    return float(value)
