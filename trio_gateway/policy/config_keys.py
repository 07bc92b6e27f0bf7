"""Dotted keys (`config get`, `config set`, `config unset`): a key path like
`gateway.drain.timeoutSeconds` read from, or written into, a decoded `gateway.json`.

Pure: the raw document in, a new raw document out; the caller writes it, all or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from trio_gateway.errors import ConfigError
from trio_gateway.policy import strict_json
from trio_gateway.policy.config import AccountKind, Config, parse, to_json


def _split_key(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(key or "(empty key)", "not a dotted key like gateway.drain.timeoutSeconds")
    return parts


def get_key(raw: Mapping[str, Any], key: str, kinds: Mapping[str, AccountKind] | None = None) -> Any:
    """The value at a dotted key: from the file when set there, else the built-in default
    (`kinds`: see `config_checks.check`; without them, accounts hold the common keys only)."""
    parts = _split_key(key)
    merged = to_json(parse(raw, kinds))
    node: Any = merged
    for i, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        raise ConfigError(".".join(parts[: i + 1]), "no such key")
    return node


def parse_value(text: str) -> Any:
    """`config set` values: JSON when they parse as JSON, else the text as a string."""
    try:
        return strict_json.loads(text)
    except strict_json.JsonInputError:
        return text


def unset_key(
    raw: Mapping[str, Any], key: str, kinds: Mapping[str, AccountKind] | None = None
) -> tuple[dict[str, Any], Config]:
    """A new raw document without `key` (the built-in default applies again), objects it leaves
    empty removed, and its parsed config; raises, writing nothing, if the result is not valid."""
    parts = _split_key(key)
    new: dict[str, Any] = json.loads(json.dumps(raw))
    trail: list[dict[str, Any]] = [new]
    for part in parts[:-1]:
        child = trail[-1].get(part)
        if not isinstance(child, dict):
            raise ConfigError(key, "is not set in gateway.json; nothing to unset")
        trail.append(child)
    if parts[-1] not in trail[-1]:
        raise ConfigError(key, "is not set in gateway.json; nothing to unset")
    del trail[-1][parts[-1]]
    for parent, part, child in reversed(list(zip(trail, parts, trail[1:], strict=False))):
        if not child:
            del parent[part]
    return new, parse(new, kinds)


def set_key(
    raw: Mapping[str, Any], key: str, value: Any, kinds: Mapping[str, AccountKind] | None = None
) -> tuple[dict[str, Any], Config]:
    """A new raw document with `key` set, and its parsed config. Raises before returning
    anything when the whole new document would not be valid, so a caller writes all or nothing."""
    parts = _split_key(key)
    new: dict[str, Any] = json.loads(json.dumps(raw))
    node: Any = new
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not an object; cannot set a key inside it")
        node = child
    node[parts[-1]] = value
    return new, parse(new, kinds)
