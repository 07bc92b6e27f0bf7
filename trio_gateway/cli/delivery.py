"""`trio-gateway delivery list|create|process|retry|repair` (SPEC 4): the operator's hands on
the queue, so that inspecting or fixing it never takes an `rm`."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

from trio_gateway.channels.registry import ChannelSet, check_configured
from trio_gateway.cli import add_commands
from trio_gateway.cli.progress import Progress
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.delivery.repair import repair as repair_queue
from trio_gateway.delivery.scheduler import Reroute
from trio_gateway.delivery.service import ClosableChannels
from trio_gateway.delivery.worker import DeliveryWorker
from trio_gateway.errors import NotFoundError, UsageError
from trio_gateway.log import EventLog, open_log
from trio_gateway.models.registry import load_config
from trio_gateway.policy.config import Config
from trio_gateway.policy.entry import DeliveryEntry, check_id, entry_to_json
from trio_gateway.storage.atomic import in_thread
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.home import Home
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(parser: argparse.ArgumentParser) -> None:
    sub = add_commands(parser)
    list_ = sub.add_parser("list", help="pending entries (or dead letters with --failed)")
    list_.add_argument("--failed", action="store_true")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_sync(_list))
    create = sub.add_parser("create", help="validate and enqueue one delivery")
    create.add_argument("--channel", required=True)
    create.add_argument("--to", required=True)
    create.add_argument("--text", required=True)
    create.add_argument("--account")
    create.add_argument("--agent", default="main")
    create.set_defaults(func=_sync(_create))
    process = sub.add_parser("process", help="deliver every due entry once")
    process.add_argument("--once", action="store_true", required=True)
    process.set_defaults(func=_sync(_process))
    retry = sub.add_parser("retry", help="move a dead letter back to pending, attempts reset")
    retry.add_argument("id")
    retry.set_defaults(func=_sync(_retry))
    repair = sub.add_parser("repair", help="re-route or dead-letter misrouted entries; deletes nothing")
    repair.add_argument("--dry-run", action="store_true")
    repair.set_defaults(func=_sync(_repair))


Handler = Callable[[argparse.Namespace, "Context"], Awaitable[int]]


def _sync(handler: Handler) -> Callable[[argparse.Namespace, Context], int]:
    def run(args: argparse.Namespace, ctx: Context) -> int:
        code: int = trio.run(partial(handler, args, ctx))
        return code

    return run


def _log(ctx: Context) -> EventLog:
    # The [DELIVERY] lines go to the gateway's log file; stdout carries the command's answer.
    # Written inline: a one-shot command's lines are in the file when it returns.
    return open_log(ctx.home.ensure().log_path, fmt=ctx.log_format, echo=None, threaded=False)


def _queue(home: Home, log: EventLog) -> DeliveryQueue:
    return DeliveryQueue(home.queue_dir, in_thread, log)


@contextlib.asynccontextmanager
async def _store(ctx: Context, log: EventLog) -> AsyncIterator[DeliveryStore]:
    """The home's queue; in cluster mode (SPEC 12) the shared one in the database."""
    config = load_config(ctx.home.config_path)
    if config.cluster.backend != "postgres":
        yield _queue(ctx.home, log)
        return
    from trio_gateway.app.cluster import cli_queue  # only cluster mode loads psycopg

    async with cli_queue(config, os.environ, log) as queue:
        yield queue


def channels_for(config: Config, home: Home) -> ClosableChannels:
    """The channel adapters for `config`, from the channel registry."""
    return ChannelSet.build(config, home, os.environ, None, in_thread)


# --- list -------------------------------------------------------------------------------------


def _row(entry: DeliveryEntry, state: str) -> str:
    when = entry.failed_reason if state == "failed" else entry.next_attempt_at.isoformat().replace("+00:00", "Z")
    return f"{entry.id}  {state:8}  {entry.kind:19}  {entry.channel}:{entry.to}  attempts={entry.attempts}  {when}"


async def _list(args: argparse.Namespace, ctx: Context) -> int:
    if not ctx.home.root.is_dir():
        # A read command never creates a home: a mistyped --home is named, not filled.
        raise NotFoundError(f"no gateway home at {ctx.home.root} (mistyped --home? `gateway start` creates one)")
    async with _store(ctx, EventLog()) as queue:
        if args.failed:
            rows = [("failed", e) for e in await queue.list_failed()]
        else:
            rows = [("sending", e) for e in await queue.list_inflight()] + [
                ("pending", e) for e in await queue.list_pending()
            ]
    if args.json:
        print(json.dumps([entry_to_json(e) | {"state": s} for s, e in rows], indent=2, ensure_ascii=False))
    else:
        for state, entry in rows:
            print(_row(entry, state))
        print(f"{len(rows)} {'dead letter(s)' if args.failed else 'pending entry(ies)'}")
    return 0


# --- create, retry ----------------------------------------------------------------------------


async def _create(args: argparse.Namespace, ctx: Context) -> int:
    config = load_config(ctx.home.config_path)
    check_configured(config.channels, args.channel, args.to, args.account)
    log = _log(ctx)
    async with _store(ctx, log) as queue:
        outbox = Outbox(queue, config.agents, WallClock.start(), log)
        entry = await outbox.submit_manual(args.channel, args.to, args.account, args.agent, args.text)
    print(entry.id)
    return 0


async def _retry(args: argparse.Namespace, ctx: Context) -> int:
    check_id(args.id)  # before anything is opened: the id is part of a file name
    async with _store(ctx, _log(ctx)) as queue:
        entry = await queue.retry_dead(args.id, WallClock.start().now())
    print(f"{entry.id} back to pending: {entry.channel}:{entry.to}")
    return 0


# --- process --once ---------------------------------------------------------------------------


async def _process(args: argparse.Namespace, ctx: Context) -> int:
    if not args.once:
        raise UsageError("only `delivery process --once`; a running gateway delivers continuously")
    config = load_config(ctx.home.config_path)
    log = _log(ctx)
    channels = channels_for(config, ctx.home)
    try:
        async with _store(ctx, log) as queue:
            clock = WallClock.start()
            worker = DeliveryWorker(queue, channels, config.delivery, clock, log, WorkRegistry(log), random.Random())
            results = await worker.process_once()
    finally:
        with trio.move_on_after(config.gateway.channel_stop_timeout_seconds, shield=True):
            await channels.aclose()
    for result in results:
        print(result.line)
    return 0 if all(r.kind == "ok" for r in results) else 1


# --- repair -----------------------------------------------------------------------------------


async def _repair(args: argparse.Namespace, ctx: Context) -> int:
    config = load_config(ctx.home.config_path)
    root = ctx.home.queue_dir
    bar = Progress(len(os.listdir(root)) if root.exists() else 0, sys.stderr, "repair ")
    try:
        async with _store(ctx, _log(ctx)) as queue:
            reports = await repair_queue(
                queue, config.agents, WallClock.start(), dry_run=args.dry_run, on_progress=bar.update
            )
    finally:
        bar.close()
    for report in reports:
        print(report.line)
    rerouted = sum(isinstance(r.action, Reroute) for r in reports)
    dead = len(reports) - rerouted
    skipped = sum(not r.done for r in reports) if not args.dry_run else 0
    verb = "would re-route" if args.dry_run else "re-routed"
    print(f"{verb} {rerouted}, {'would move' if args.dry_run else 'moved'} {dead} to failed/, skipped {skipped}")
    return 0
