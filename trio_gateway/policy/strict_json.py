"""JSON from outside (request bodies, webhook bodies, `gateway.json`), read so that every bad
input is one `JsonInputError` with a message a person can act on, and never anything else.

`json.loads` alone lets through what later kills the gateway: `NaN`/`Infinity` and `1e400` (an
infinite float), lone surrogates (`"\\ud800"` parses, then every UTF-8 write of it raises), and it
raises what callers do not expect: `RecursionError` on deep nesting, a bare `ValueError` on an
integer of more than 4,300 digits. Here each of those is refused at the edge, with the field
path of the bad value when there is one.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# Deeper than any config or platform payload we read; far below the recursion limit, so the
# walk below and every later consumer (cattrs, json.dumps) stays clear of RecursionError.
MAX_DEPTH = 64

# The only way a lone surrogate gets into text decoded as strict UTF-8: an escape `\uD800`..`\uDFFF`.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInputError(ValueError):
    """Input that is not the JSON the gateway accepts. `where` is the field path (`""`: the
    document itself)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: {what}" if where else what)
        self.where = where
        self.what = what


def _refuse_constant(name: str) -> Any:
    raise JsonInputError("", f"{name} is not a number JSON allows")


def loads(data: str | bytes) -> Any:
    """Decode and check one JSON document. Raises only `JsonInputError`."""
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise JsonInputError("", f"not valid UTF-8 (byte {exc.start})") from None
    overflowed: list[str] = []

    def parse_float(literal: str) -> float:
        number = float(literal)  # `1e400` is valid JSON and parses as inf
        if not math.isfinite(number):
            overflowed.append(literal)
        return number

    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=parse_float)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonInputError("", f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # an integer too long to convert, and the like
        raise JsonInputError("", f"not valid JSON: {exc}") from None
    if _walk_could_refuse(data, text, overflowed):
        check(value)
    return value


def _walk_could_refuse(data: str | bytes, text: str, overflowed: list[str]) -> bool:
    """False when the document can hold nothing `check` refuses, so the walk (several times
    the parse on a big flat body, and on the event loop) is skipped: bytes decoded as strict
    UTF-8 hold a lone surrogate only through an escape, a float is non-finite only if the
    parse saw it, and nesting cannot be deeper than the number of opening brackets."""
    return (
        bool(overflowed)
        or isinstance(data, str)
        or _SURROGATE_ESCAPE.search(text) is not None
        or text.count("[") + text.count("{") > MAX_DEPTH
    )


def bad_text(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate), or None."""
    if text.isascii():  # most text, and no copy made to find out
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at index {exc.start})"
    return None


def check(value: Any) -> None:
    """Every string valid Unicode, every float finite, nesting at most `MAX_DEPTH` deep.
    Iterative, so a deep document cannot exhaust the stack here. It runs on the event loop
    for every body, so only containers go on the stack and a field path is built only for a
    container or a bad value (a path per element made a 1 MiB array of numbers cost 20 times
    its own parse)."""
    why = _problem(value)
    if why is not None:
        raise JsonInputError("", why)
    stack: list[tuple[str, Any, int]] = [("", value, 0)] if isinstance(value, (dict, list)) else []
    while stack:
        where, node, depth = stack.pop()
        if node and depth >= MAX_DEPTH:  # its elements would be one level too deep
            raise JsonInputError("", f"nested too deeply (more than {MAX_DEPTH} levels)")
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            if isinstance(key, str) and (why := bad_text(key)) is not None:
                raise JsonInputError(ascii(_field(where, key)), f"key {why}")
            if isinstance(child, (dict, list)):
                stack.append((_field(where, key), child, depth + 1))
            elif (why := _problem(child)) is not None:
                raise JsonInputError(_field(where, key), why)


def _problem(scalar: Any) -> str | None:
    if isinstance(scalar, str):
        return bad_text(scalar)
    if isinstance(scalar, float) and not math.isfinite(scalar):
        return "not a finite number"
    return None


def _field(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key
