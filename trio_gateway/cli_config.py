"""`trio-gateway config get|set|validate` (SPEC 4): dotted camelCase keys on `gateway.json`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trio_gateway import config as cfg
from trio_gateway import strict_json
from trio_gateway.errors import ConfigError
from trio_gateway.store import atomic_write_json

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser("config", help="read, change and check gateway.json")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=type(parser))
    get = sub.add_parser("get", help="print the value at a dotted key (defaults included)")
    get.add_argument("key")
    get.set_defaults(func=_get)
    set_ = sub.add_parser("set", help="set a dotted key; VALUE is JSON, else a string")
    set_.add_argument("key")
    set_.add_argument("value")
    set_.set_defaults(func=_set)
    validate = sub.add_parser("validate", help="check gateway.json; exit 2 naming the first problem")
    validate.set_defaults(func=_validate)


def read_raw(path: Path) -> dict[str, Any]:
    """The file's JSON object, `{}` when there is no file (the built-in defaults)."""
    # Every way reading can fail is a ConfigError naming the file: a reload catches exactly
    # that and keeps the running config, so anything else here would kill a running gateway.
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = strict_json.loads(data)
    except strict_json.JsonInputError as exc:
        raise ConfigError(f"{path}{' ' + exc.where if exc.where else ''}", exc.what) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "expected a JSON object at the top level")
    return raw


def load(path: Path) -> cfg.Config:
    return cfg.parse(read_raw(path))


def _get(args: argparse.Namespace, ctx: Context) -> int:
    value = cfg.get_key(read_raw(ctx.home.config_path), args.key)
    print(json.dumps(value) if not isinstance(value, str) else value)
    return 0


def _set(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.config_path
    new_raw, _ = cfg.set_key(read_raw(path), args.key, cfg.parse_value(args.value))
    atomic_write_json(path, new_raw)
    print(f"{args.key} = {json.dumps(cfg.get_key(new_raw, args.key))}")
    return 0


def _validate(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.config_path
    load(path)
    print(f"{path}: ok" if path.exists() else f"{path}: absent; the built-in defaults are valid")
    return 0
