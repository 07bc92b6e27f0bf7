"""`trio-gateway dashboard`: the Control UI's URL with a one-time login code (SPEC 13)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from trio_gateway.cli.dashboard_url import dashboard_url

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace, ctx: Context) -> int:
    url, seconds = dashboard_url(ctx.home)
    print(url)
    print(f"(the code logs one browser in, once, within {seconds:g} s)")
    return 0
