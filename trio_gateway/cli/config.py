"""`trio-gateway config get|set|validate` (SPEC 4): dotted camelCase keys on `gateway.json`."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from trio_gateway import config as cfg
from trio_gateway.cli import add_commands
from trio_gateway.config_file import load, read_raw
from trio_gateway.store import atomic_write_json

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(parser: argparse.ArgumentParser) -> None:
    sub = add_commands(parser)
    get = sub.add_parser("get", help="print the value at a dotted key (defaults included)")
    get.add_argument("key")
    get.set_defaults(func=_get)
    set_ = sub.add_parser("set", help="set a dotted key; VALUE is JSON, else a string")
    set_.add_argument("key")
    set_.add_argument("value")
    set_.set_defaults(func=_set)
    validate = sub.add_parser("validate", help="check gateway.json; exit 2 naming the first problem")
    validate.set_defaults(func=_validate)


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
