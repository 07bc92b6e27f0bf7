"""`trio-gateway pairing list [CHANNEL] [--json]`, `pairing approve CHANNEL CODE`, `pairing revoke
CHANNEL ACCOUNT SENDER` (SPEC 4, 15): who may talk to the agent.

Through the running gateway's `/v1/pairing` routes when there is one (its book, its locks); with
no gateway, straight on the book itself: the files under `access/`, or the cluster database
(whose schema this command migrates first, as a starting node would).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import trio

from trio_gateway.cli import add_commands
from trio_gateway.cli.client import GatewayClient, nothing_running
from trio_gateway.errors import NotFoundError

if TYPE_CHECKING:
    from trio_gateway.cli import Context
    from trio_gateway.policy.pairing import PairingBook


def register(parser: argparse.ArgumentParser) -> None:
    sub = add_commands(parser)
    list_ = sub.add_parser("list", help="pending pairing codes and approved senders")
    list_.add_argument("channel", nargs="?")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_list)
    approve = sub.add_parser("approve", help="let the sender who was given CODE talk to the agent")
    approve.add_argument("channel")
    approve.add_argument("code")
    approve.set_defaults(func=_approve)
    revoke = sub.add_parser("revoke", help="take a sender's approval back")
    revoke.add_argument("channel")
    revoke.add_argument("account")
    revoke.add_argument("sender")
    revoke.set_defaults(func=_revoke)


# --- through the gateway, or on the book --------------------------------------------------------


def _offline(ctx: Context, action: Callable[[PairingBook, dt.datetime], Any]) -> Any:
    """`action(book, now)` on the home's own book, with no gateway running."""

    async def run() -> Any:
        async with _book(ctx) as book:
            return await action(book, dt.datetime.now(dt.UTC))

    return trio.run(run)


@contextlib.asynccontextmanager
async def _book(ctx: Context) -> AsyncIterator[PairingBook]:
    from trio_gateway.log import open_log
    from trio_gateway.models.registry import load_config
    from trio_gateway.storage.access import FileAccessBook
    from trio_gateway.storage.atomic import in_thread

    config = load_config(ctx.home.config_path)
    # [ACCESS] lines (an approval, a quarantined file) go to the gateway's log, as if it ran.
    log = open_log(ctx.home.ensure().log_path, fmt=ctx.log_format, echo=None, threaded=False)
    if config.cluster.backend != "postgres":
        yield FileAccessBook(ctx.home.access_dir, in_thread, log)
        return
    from trio_gateway.app.cluster import database  # only cluster mode loads psycopg
    from trio_gateway.cluster.pg_pairing import PgPairingBook
    from trio_gateway.cluster.schema import migrate

    db = database(config, os.environ)
    await db.open()
    try:
        await db.run(migrate)
        yield PgPairingBook(db, log)
    finally:
        with trio.move_on_after(5, shield=True):
            await db.close()


def _running(ctx: Context) -> bool:
    return not nothing_running(ctx.home)


# --- the commands -------------------------------------------------------------------------------


def _list(args: argparse.Namespace, ctx: Context) -> int:
    from trio_gateway.http import pairing as surfaces

    if not ctx.home.root.is_dir():
        # A read command never creates a home: a mistyped --home is named, not filled.
        raise NotFoundError(f"no gateway home at {ctx.home.root} (mistyped --home? `gateway start` creates one)")
    if _running(ctx):
        query = f"?channel={urllib.parse.quote(args.channel, safe='')}" if args.channel else ""
        with GatewayClient.connect(ctx.home) as client:
            listing = client.get(f"/v1/pairing{query}")
    else:
        listing = _offline(ctx, lambda book, now: surfaces.listing(book, args.channel, now))
    if args.json:
        print(json.dumps(listing, indent=2, ensure_ascii=False))
        return 0
    print("\n".join(list_lines(listing, dt.datetime.now(dt.UTC))))
    return 0


def list_lines(listing: dict[str, Any], now: dt.datetime) -> list[str]:
    lines = [f"pending codes ({len(listing['pending'])}):"]
    for p in listing["pending"]:
        left = max(0, int((dt.datetime.fromisoformat(p["expiresAt"]) - now).total_seconds() // 60))
        lines.append(f"  {p['channel']:10} {p['accountId']:16} {p['code']}  sender={p['sender']}  expires in {left}m")
    lines.append(f"approved senders ({len(listing['approvals'])}):")
    for a in listing["approvals"]:
        lines.append(f"  {a['channel']:10} {a['accountId']:16} sender={a['sender']}  since {a['approvedAt']}")
    if listing["pending"]:
        lines.append("approve one with: trio-gateway pairing approve CHANNEL CODE")
    return lines


def _approve(args: argparse.Namespace, ctx: Context) -> int:
    from trio_gateway.http import pairing as surfaces
    from trio_gateway.policy import codec

    if _running(ctx):
        with GatewayClient.connect(ctx.home) as client:
            approval = client.post("/v1/pairing/approve", {"channel": args.channel, "code": args.code})["approval"]
    else:
        made = _offline(ctx, lambda book, now: surfaces.approve(book, args.channel, args.code, now))
        approval = codec.unstructure(made)
    print(f"approved {approval['channel']} {approval['accountId']} sender={approval['sender']}")
    return 0


def _revoke(args: argparse.Namespace, ctx: Context) -> int:
    from trio_gateway.http import pairing as surfaces

    if _running(ctx):
        body = {"channel": args.channel, "accountId": args.account, "sender": args.sender}
        with GatewayClient.connect(ctx.home) as client:
            client.post("/v1/pairing/revoke", body)
    else:
        _offline(ctx, lambda book, _now: surfaces.revoke(book, args.channel, args.account, args.sender))
    print(f"revoked {args.channel} {args.account} sender={args.sender}")
    return 0
