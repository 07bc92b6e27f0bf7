"""Cluster mode's parts for a gateway (SPEC 12): the node (a root-nursery server) and the
delivery factory over the shared queue. `assemble.py` asks for them when
`cluster.backend` is "postgres"; nothing else changes for a gateway on files."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import secrets
from collections.abc import AsyncIterator, Callable, Mapping

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.channels.registry import ChannelSet
from trio_gateway.cluster.db import CANCEL_BOUND_SECONDS, Database
from trio_gateway.cluster.inbound import InboundLeases, PgCursors
from trio_gateway.cluster.node import ClusterNode, default_node_id
from trio_gateway.cluster.notify import DELIVERY, RELEASED
from trio_gateway.cluster.pg_delivery import PgDelivery
from trio_gateway.cluster.pg_pairing import PgPairingBook
from trio_gateway.cluster.pg_queue import PgDeliveryQueue
from trio_gateway.cluster.pg_sessions import PgSessionStore
from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import Config
from trio_gateway.runtime.deps import DeliveryFactory, DeliveryHost
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.home import Home

# Past the longest attempt, how long a claim's lease outlives its node's last heartbeat.
_LEASE_MARGIN_SECONDS = 5.0


def _dsn_from(config: Config, env: Mapping[str, str]) -> str:
    dsn = env.get(config.cluster.dsn_env)
    if not dsn:
        raise ConfigError("cluster.dsnEnv", f"environment variable {config.cluster.dsn_env} is not set")
    return dsn


def database(config: Config, env: Mapping[str, str], *, inline: bool = False) -> Database:
    return Database.create(
        _dsn_from(config, env), statement_timeout=config.cluster.statement_timeout_seconds, inline=inline
    )


def _node_for(config: Config, db: Database, log: EventLog) -> ClusterNode:
    # The lease is a backstop only: longer than any attempt plus the time to judge a node dead.
    lease = config.delivery.attempt_timeout_seconds + config.cluster.dead_after_seconds + _LEASE_MARGIN_SECONDS
    return ClusterNode.create(db, config.cluster, log, lambda: dt.datetime.now(dt.UTC), lease_seconds=lease)


@contextlib.asynccontextmanager
async def cli_queue(config: Config, env: Mapping[str, str], log: EventLog) -> AsyncIterator[PgDeliveryQueue]:
    """The shared queue for one CLI command (`delivery ...`): a short-lived node of its own,
    so its claims (`process --once`, `repair`) are fenced and taken over like any node's."""
    cli = attrs.evolve(config.cluster, node_id=f"cli-{default_node_id()}")
    node = _node_for(attrs.evolve(config, cluster=cli), database(config, env), log)
    await node.start()
    try:
        yield node.queue
    finally:
        with trio.move_on_after(CANCEL_BOUND_SECONDS * 3, shield=True):
            await node.leave(forget=True)


def cluster_parts(
    home: Home,
    config: Config,
    log: EventLog,
    env: Mapping[str, str],
    *,
    inline: bool = False,
    transport: http.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    console_runner: BlockingRunner = in_thread,
) -> tuple[ClusterNode, DeliveryFactory]:
    node = _node_for(config, database(config, env, inline=inline), log)

    async def factory(config: Config, gateway: DeliveryHost) -> PgDelivery:
        assert gateway.wall is not None
        channels = ChannelSet.build(config, home, env, transport, console_runner)
        return PgDelivery.build(
            node.queue,
            channels,
            config,
            gateway.wall,
            log,
            gateway.registry,
            rng,
            on_peer_delivery=lambda wake: node.on_peers(DELIVERY, wake),
        )

    return node, factory


def session_store_for(node: ClusterNode) -> Callable[[Callable[[str], None]], PgSessionStore]:
    def make(on_lost: Callable[[str], None]) -> PgSessionStore:
        node.sessions.on_lost = on_lost
        return node.sessions

    return make


def inbound_gate(node: ClusterNode, config: Config) -> InboundLeases:
    """The listeners' gate: leases judged on the database's clock."""
    cluster = config.cluster
    gate = InboundLeases(node.leases, node.log, cluster.heartbeat_seconds, cluster.dead_after_seconds)
    gate.on_released = lambda wake: node.on_peers(RELEASED, wake)  # a drained peer's account: take it now
    return gate


def pairing_book(node: ClusterNode) -> PgPairingBook:
    """Approvals and pairing codes in the shared database: one approval counts on every node."""
    return PgPairingBook(node.db, node.log)


def inbound_cursors(node: ClusterNode) -> PgCursors:
    return PgCursors(node.db, node.node_id, node.log)


def session_id_prefix() -> str:
    """New session ids carry a prefix random per process: two nodes (or two lives of one
    node id) never mint the same id."""
    return f"s-{secrets.token_hex(4)}"
