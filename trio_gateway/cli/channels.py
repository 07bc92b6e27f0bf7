"""`trio-gateway channels status [--json]` and `channels resume CHANNEL ACCOUNT` (SPEC 11):
against the running gateway (`GET /v1/channels`, `POST /v1/channels/C/A/resume`)."""

from __future__ import annotations

import argparse
import json
import urllib.parse
from typing import Any

from trio_gateway.cli.client import GatewayClient
from trio_gateway.storage.home import Home


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=type(parser))
    status = sub.add_parser("status", help="each account's inbound mode, state and messages heard")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=lambda args, ctx: _status_command(ctx.home, as_json=args.json))
    resume = sub.add_parser("resume", help="retry an account paused by an auth failure (listener and sender)")
    resume.add_argument("channel")
    resume.add_argument("account")
    resume.set_defaults(func=lambda args, ctx: _resume_command(ctx.home, args.channel, args.account))


def _status_command(home: Home, *, as_json: bool = False) -> int:
    with GatewayClient.connect(home) as client:
        channels = client.get("/v1/channels")["channels"]
    if as_json:
        print(json.dumps({"channels": channels}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(status_lines(channels)))
    return 0


def status_lines(channels: list[dict[str, Any]]) -> list[str]:
    if not channels:
        return ["no channel accounts configured"]
    lines = []
    for c in channels:
        inbound = c["inbound"]
        age = inbound.get("lastMessageAgeSeconds")
        last = "never" if age is None else f"{age:.0f}s ago"
        line = f"{c['channel']:16} {c['accountId']:20} {inbound['mode']:8} {inbound['state']:12}"
        line += f" messages={inbound['messages']} last={last}"
        if inbound.get("pausedReason"):
            line += f"  ({inbound['pausedReason']})"
        lines.append(line)
    return lines


def _resume_command(home: Home, channel: str, account: str) -> int:
    path = f"/v1/channels/{urllib.parse.quote(channel, safe='')}/{urllib.parse.quote(account, safe='')}/resume"
    with GatewayClient.connect(home) as client:
        answer = client.post(path)
    if answer["resumed"]:
        print(f"resumed {channel} {account}: listening again")
    else:
        print(f"{channel} {account} was not paused; its sends were made due again")
    return 0
