"""`trio-gateway cluster status [--json]` (SPEC 12): the nodes sharing the cluster database.

Reads the database itself, not a running gateway: the question is most urgent when a node is
down. Only this command group loads psycopg."""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any

from trio_gateway.errors import UsageError

if TYPE_CHECKING:
    from trio_gateway.cli import Context


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=type(parser))
    status = sub.add_parser("status", help="nodes with state, heartbeat age, sessions owned, claims held")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace, ctx: Context) -> int:
    # Every reader of gateway.json checks its channel names with the channel registry, which
    # loads trio: imported here, as trio below, so importing this group stays light.
    from trio_gateway.models.registry import load_config

    config = load_config(ctx.home.config_path)
    if config.cluster.backend != "postgres":
        raise UsageError('cluster mode is off: set cluster.backend to "postgres" (SPEC 12)')
    import trio  # only when there is a database to ask

    nodes: list[dict[str, Any]] = trio.run(_read, config)
    if args.json:
        print(json.dumps({"backend": "postgres", "nodes": nodes}, indent=2))
        return 0
    for line in status_lines(nodes):
        print(line)
    return 0


async def _read(config: Any) -> list[dict[str, Any]]:
    from trio_gateway.app.cluster import database
    from trio_gateway.cluster.node import cluster_status

    db = database(config, os.environ)
    await db.open()
    try:
        return await cluster_status(db, config.cluster.dead_after_seconds)
    finally:
        await db.close()


def status_lines(nodes: list[dict[str, Any]]) -> list[str]:
    lines = [f"{len(nodes)} node(s)"]
    for n in nodes:
        lines.append(
            f"  {n['nodeId']:24} {n['state']:9} heartbeat {n['heartbeatAgeSeconds']:.1f}s ago"
            f"  generation {n['generation']}  sessions {n['sessionsOwned']}  claims {n['claimsHeld']}"
            f"  {n['host']} pid {n['pid']}"
        )
    return lines
