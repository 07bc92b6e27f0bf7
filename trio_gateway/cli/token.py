"""`trio-gateway token create [--print] [--metrics]`: the admin token, made without starting a
gateway; or with `--metrics` the read-only token for `GET /metrics` (SPEC 5), so a Prometheus job
never holds the key that can stop the gateway.

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
    create.add_argument(
        "--metrics",
        action="store_true",
        help="the read-only token for GET /metrics (metrics.token, mode 0600), printed once when created",
    )
    create.set_defaults(func=_create)


def _create(args: argparse.Namespace, ctx: Context) -> int:
    if args.metrics:
        return _create_metrics(args, ctx)
    path = token_path(ctx.home.token_path, os.environ)
    existed = read_token(path) is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = auth.create_token(path)
    if args.print:
        print(token)
    else:
        print(f"{path}: {'exists; kept' if existed else 'created (mode 0600)'}")
    return 0


def _create_metrics(args: argparse.Namespace, ctx: Context) -> int:
    """Printed when made (the one time a person needs to see it, to hand it to Prometheus);
    an existing one is kept and shown only with `--print`. The running gateway reads the file
    at each scrape: no restart needed."""
    path = ctx.home.metrics_token_path
    existed = read_token(path) is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    token = auth.create_token(path)
    if args.print or not existed:
        print(token)
    else:
        print(f"{path}: exists; kept")
    return 0
