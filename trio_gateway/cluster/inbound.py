"""SPEC 12: an inbound account is listened to by one node at a time. The listener supervisor
(`channels/listen.py`) asks this gate for the lease `inbound:<channel>:<account>` before it
listens, renews it every heartbeat, and stops listening when it is lost. Its cursor lives in
the database (`inbound_cursors`), so the node that takes the account over goes on from there.

A database error counts as "not held": a node that cannot reach the database stops listening
(its peers may have taken the account) rather than risk two nodes answering one message.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio
from psycopg.types.json import Jsonb

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.leases import Lease, Leases
from trio_gateway.errors import ClusterDatabaseError
from trio_gateway.log import EventLog


@attrs.define
class InboundLeases:
    leases: Leases
    log: EventLog
    # Renewed every heartbeat; the expiry is a backstop (a dead holder is taken over when its
    # heartbeat stops, as for every lease).
    renew_seconds: float
    ttl_seconds: float
    # Subscribes a wake-up to peers releasing a lease (`ClusterNode.on_peers(RELEASED, ...)`);
    # returns the unsubscribe function. The default: none, `standby` waits `renew_seconds`.
    on_released: Callable[[Callable[[], None]], Callable[[], None]] = lambda _wake: lambda: None

    def key(self, channel: str, account_id: str) -> str:
        return _inbound_key(channel, account_id)

    async def take(self, key: str) -> Lease | None:
        try:
            return await self.leases.acquire(key, ttl=self.ttl_seconds)
        except ClusterDatabaseError as exc:
            self.log.warn("CLUSTER", f"Could not take the lease {key}", error=str(exc)[:200])
            return None

    async def keep(self, held: Any) -> Lease | None:
        assert isinstance(held, Lease)
        try:
            return await self.leases.renew(held, ttl=self.ttl_seconds)
        except ClusterDatabaseError as exc:
            self.log.warn("CLUSTER", f"Could not renew the lease {held.key}", error=str(exc)[:200])
            return None

    async def standby(self) -> None:
        released = trio.Event()
        unsubscribe = self.on_released(released.set)
        try:
            with trio.move_on_after(self.renew_seconds):
                await released.wait()
        finally:
            unsubscribe()

    async def give_up(self, held: Any) -> None:
        assert isinstance(held, Lease)
        try:
            await self.leases.release(held)
        except ClusterDatabaseError as exc:
            self.log.warn("CLUSTER", f"Could not release the lease {held.key}", error=str(exc)[:200])


def _inbound_key(channel: str, account_id: str) -> str:
    return f"inbound:{channel}:{account_id}"


@attrs.define
class PgCursors:
    """`listen.Cursors` in the database. A save is fenced by the account's lease: a node that
    lost it (and is being stopped) cannot move the new holder's cursor."""

    db: Database
    node_id: str
    log: EventLog

    async def load(self, channel: str, account_id: str) -> Any:
        def read(conn: Conn) -> Any:
            row = conn.execute(
                "SELECT cursor FROM inbound_cursors WHERE channel = %s AND account_id = %s", (channel, account_id)
            ).fetchone()
            return None if row is None else row[0]

        return await self.db.run(read)

    async def save(self, channel: str, account_id: str, cursor: Any) -> None:
        params = {
            "channel": channel,
            "account": account_id,
            "cursor": Jsonb(cursor),
            "key": _inbound_key(channel, account_id),
            "me": self.node_id,
        }

        def write(conn: Conn) -> int:
            return conn.execute(
                "INSERT INTO inbound_cursors (channel, account_id, cursor, updated_at)"
                " SELECT %(channel)s, %(account)s, %(cursor)s, now()"
                " WHERE EXISTS (SELECT 1 FROM leases WHERE key = %(key)s AND node_id = %(me)s)"
                " ON CONFLICT (channel, account_id) DO UPDATE SET cursor = EXCLUDED.cursor,"
                "  updated_at = EXCLUDED.updated_at",
                params,
            ).rowcount

        if await self.db.run(write) == 0:
            self.log.warn("CLUSTER", f"Cursor not saved channel={channel} account={account_id}: lease lost")
