"""`trio-gateway config get|set|validate` (SPEC 4): dotted camelCase keys on `gateway.json`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trio_gateway.cli import add_commands
from trio_gateway.errors import ConfigError
from trio_gateway.policy import config as cfg
from trio_gateway.policy import config_keys
from trio_gateway.policy.env_check import missing_secrets
from trio_gateway.storage.atomic import atomic_write_json
from trio_gateway.storage.config_file import read_raw

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
    unset = sub.add_parser("unset", help="remove a dotted key from gateway.json (its default applies)")
    unset.add_argument("key")
    unset.set_defaults(func=_unset)
    validate = sub.add_parser("validate", help="check gateway.json; exit 2 naming the first problem")
    validate.add_argument("--env", action="store_true", help="also check that every named secret is set")
    validate.set_defaults(func=_validate)


def _get(args: argparse.Namespace, ctx: Context) -> int:
    raw = read_raw(ctx.home.config_path)
    value = config_keys.get_key(raw, args.key, _kinds() if _names_a_channel(raw) else None)
    print(json.dumps(value) if not isinstance(value, str) else value)
    return 0


def _set(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.config_path
    kinds = _kinds()
    new_raw, _ = config_keys.set_key(read_raw(path), args.key, config_keys.parse_value(args.value), kinds)
    atomic_write_json(path, new_raw)
    print(f"{args.key} = {json.dumps(config_keys.get_key(new_raw, args.key, kinds))}")
    return 0


def _unset(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.config_path
    kinds = _kinds()
    new_raw, _ = config_keys.unset_key(read_raw(path), args.key, kinds)
    atomic_write_json(path, new_raw)
    print(f"{args.key} unset; default {json.dumps(config_keys.get_key(new_raw, args.key, kinds), default=str)}")
    return 0


def _validate(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.config_path
    cfg.parse(read_raw(path), _kinds())
    if args.env:
        missing = missing_secrets(read_raw(path), os.environ)
        for secret in missing:
            print(f"ConfigError: {secret.path}: environment variable {secret.variable} is not set", file=sys.stderr)
        if missing:
            return ConfigError.exit_code
    print(f"{path}: ok" if path.exists() else f"{path}: absent; the built-in defaults are valid")
    return 0


def _names_a_channel(raw: Mapping[str, Any]) -> bool:
    """Whether the file says anything the channel kinds are needed to read (a `channels`
    section, an agent's bound channels): `config get` on a file naming none skips loading them."""
    agents = raw.get("agents")
    bound = isinstance(agents, Mapping) and any(isinstance(a, Mapping) and "channels" in a for a in agents.values())
    return "channels" in raw or bound


def _kinds() -> Mapping[str, cfg.AccountKind]:
    """The channel kinds this version speaks, with their account keys. Imported here, not at the
    top: the registry loads every platform module, which the rest of the CLI has no use for."""
    from trio_gateway.channels.registry import account_kinds

    return account_kinds()
