"""Reading JSON request bodies: every wrong shape is a `BadRequestError` naming the field."""

from __future__ import annotations

import math
from typing import Any

from trio_gateway.errors import BadRequestError
from trio_gateway.policy import strict_json

JsonObject = dict[str, Any]


def json_object(body: bytes, *, empty_ok: bool = False) -> JsonObject:
    if not body.strip():
        if empty_ok:
            return {}
        raise BadRequestError("body: expected a JSON object, got an empty body")
    try:
        # Refuses NaN, 1e400, lone surrogates and deep nesting here, at the edge: each of
        # those parsed fine once and killed the gateway later (a log line, a session write).
        data = strict_json.loads(body)
    except strict_json.JsonInputError as exc:
        raise BadRequestError(f"{exc.where or 'body'}: {exc.what}") from None
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


def opt_number(data: JsonObject, key: str, low: float, high: float, *, inclusive: bool = False) -> float | None:
    """A number in `low < value <= high` (`low <= value` with `inclusive`): every numeric
    field has a documented range, so an absurd timeout is a 400 here, never an overflow (or a
    denormal `1e-320` as a drain's budget) deep inside the gateway."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequestError(f"{key}: expected a number, got {_kind(value)}")
    # An int of 400 digits is valid JSON and compares fine; float() of it would overflow.
    in_range = low <= value <= high if inclusive else low < value <= high
    if (isinstance(value, float) and not math.isfinite(value)) or not in_range:
        least = f"at least {low:g}" if inclusive else f"greater than {low:g}"
        raise BadRequestError(f"{key}: must be a number {least} and at most {high:g}")
    return float(value)
