"""`trio-gateway token create [--print]`: the admin token, made without starting a gateway.

For a gateway that must come up on a non-loopback address (a container, a service), which
refuses to start with a token nobody has seen. Writes `$TRIO_GATEWAY_TOKEN_FILE` when set, else
`gateway.token` in the home; mode 0600, never overwriting an existing token (exit 0, idempotent).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from trio_gateway.http import auth
from trio_gateway.storage.home import read_token, token_path

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=type(parser))
    create = sub.add_parser("create", help="create the admin token file (mode 0600) unless it exists")
    create.add_argument("--print", action="store_true", help="also print the token itself on stdout")
    create.set_defaults(func=_create)


def _create(args: argparse.Namespace, ctx: Context) -> int:
    path = token_path(ctx.home.token_path, os.environ)
    existed = read_token(path) is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = auth.create_token(path)
    if args.print:
        print(token)
    else:
        print(f"{path}: {'exists; kept' if existed else 'created (mode 0600)'}")
    return 0
