"""`trio-gateway dashboard`: the Control UI's URL with a one-time login code (SPEC 13)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from trio_gateway.dashboard import dashboard_url

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser(
        "dashboard", help="print the Control UI's URL with a one-time login code"
    )
    parser.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace, ctx: Context) -> int:
    url, seconds = dashboard_url(ctx.home)
    print(url)
    print(f"(the code logs one browser in, once, within {seconds:g} s)")
    return 0
