"""`trio-gateway dashboard`: the Control UI's URL with a one-time login code (SPEC 13).

The code goes in the URL's fragment (`#code=...`), which a browser never sends to a server, so
it shows up in no access log or proxy; the page trades it once for its session cookie.
"""

from __future__ import annotations

import argparse
import urllib.parse
from typing import TYPE_CHECKING

from trio_gateway.cli.client import GatewayClient
from trio_gateway.storage.home import Home

if TYPE_CHECKING:
    from trio_gateway.cli import Context

# A gateway bound to every address is reached by a browser on this host over loopback.
_ANY = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "::": "[::1]"}


def register(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace, ctx: Context) -> int:
    url, seconds = _dashboard_url(ctx.home)
    print(url)
    print(f"(the code logs one browser in, once, within {seconds:g} s)")
    return 0


def _browser_base(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    host = _ANY.get(host, f"[{host}]" if ":" in host else host)
    return f"{parts.scheme}://{host}:{parts.port}" if parts.port else f"{parts.scheme}://{host}"


def _dashboard_url(home: Home) -> tuple[str, float]:
    """The URL to open, and for how many seconds its code is good."""
    with GatewayClient.connect(home) as client:
        answer = client.post("/v1/ui/codes")
        base = _browser_base(client.target.url)
    return f"{base}/ui#code={answer['code']}", float(answer["expiresInSeconds"])
