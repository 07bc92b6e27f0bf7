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
from typing import Any

# Deeper than any config or platform payload we read; far below the recursion limit, so the
# walk below and every later consumer (cattrs, json.dumps) stays clear of RecursionError.
MAX_DEPTH = 64


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
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except JsonInputError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonInputError("", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise JsonInputError("", f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # an integer too long to convert, and the like
        raise JsonInputError("", f"not valid JSON: {exc}") from None
    check(value)
    return value


def bad_text(text: str) -> str | None:
    """Why `text` is not valid Unicode (a lone surrogate), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (lone surrogate U+{ord(text[exc.start]):04X} at index {exc.start})"
    return None


def check(value: Any) -> None:
    """Every string valid Unicode, every float finite, nesting at most `MAX_DEPTH` deep.
    Iterative, so a deep document cannot exhaust the stack here."""
    stack: list[tuple[str, Any, int]] = [("", value, 0)]
    while stack:
        where, node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise JsonInputError("", f"nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, str):
            why = bad_text(node)
            if why is not None:
                raise JsonInputError(where, why)
        elif isinstance(node, float) and not math.isfinite(node):
            raise JsonInputError(where, "not a finite number")
        elif isinstance(node, dict):
            for key, child in node.items():
                path = f"{where}.{key}" if where else str(key)
                why = bad_text(key)
                if why is not None:
                    raise JsonInputError(ascii(path), f"key {why}")
                stack.append((path, child, depth + 1))
        elif isinstance(node, list):
            stack.extend((f"{where}[{i}]", child, depth + 1) for i, child in enumerate(node))
