"""A lease per key with an epoch: one node at a time holds `inbound:<channel>:<account>` (so a
listener's cursor never forks) or `session:<id>` (so a session's turns run on one node).

    leases = Leases(db, node_id, dead_after_seconds)
    lease = await leases.acquire("inbound:telegram:bot-1", now, ttl=30)   # None: another node has it
    lease = await leases.renew(lease, now, ttl=30)                        # None: lost it; stop at once
    ok = await leases.still_held(lease)                                   # before a fenced write
    await leases.release(lease)                                           # at a drain: peers take it now

A key is free when nobody holds it, when its lease ran out, or when its holder is dead (no
heartbeat for `dead_after_seconds`, or stopped): takeover follows the heartbeat, the expiry is
only a backstop. The epoch moves on at every change of holder, never on a renewal, so a write
stamped with an epoch is refused once anyone else has held the key since. Every operation is
one statement; the renew and release are fenced by the epoch.

(Used by session ownership, `cluster status` (which counts `session:` leases as sessions owned)
and the inbound listeners, `cluster/inbound.py`.)
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import attrs

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.notify import RELEASED, notify


@attrs.frozen
class Lease:
    key: str
    node_id: str
    epoch: int
    expires_at: dt.datetime


def _lease(row: tuple[object, ...] | None) -> Lease | None:
    if row is None:
        return None
    key, node_id, epoch, expires_at = row
    return Lease(str(key), str(node_id), cast(int, epoch), cast(dt.datetime, expires_at))


@attrs.define
class Leases:
    db: Database
    node_id: str
    dead_after_seconds: float

    async def acquire(self, key: str, now: dt.datetime, *, ttl: float) -> Lease | None:
        """Take (or renew, keeping the epoch) `key` if it is free or already ours."""
        params = {
            "key": key,
            "me": self.node_id,
            "now": now,
            "until": now + dt.timedelta(seconds=ttl),
            "cutoff": now - dt.timedelta(seconds=self.dead_after_seconds),
        }

        def take(conn: Conn) -> Lease | None:
            return _lease(
                conn.execute(
                    "INSERT INTO leases AS l (key, node_id, epoch, expires_at) VALUES (%(key)s, %(me)s, 1, %(until)s)"
                    " ON CONFLICT (key) DO UPDATE SET node_id = %(me)s, expires_at = %(until)s,"
                    "  epoch = l.epoch + CASE WHEN l.node_id = %(me)s THEN 0 ELSE 1 END"
                    " WHERE l.node_id IS NULL OR l.node_id = %(me)s OR l.expires_at < %(now)s"
                    "  OR NOT EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = l.node_id"
                    "                 AND n.state <> 'stopped' AND n.heartbeat_at >= %(cutoff)s)"
                    " RETURNING key, node_id, epoch, expires_at",
                    params,
                ).fetchone()
            )

        return await self.db.run(take)

    async def renew(self, lease: Lease, now: dt.datetime, *, ttl: float) -> Lease | None:
        """Extend a lease still held under its epoch; None when it was lost."""

        def extend(conn: Conn) -> Lease | None:
            return _lease(
                conn.execute(
                    "UPDATE leases SET expires_at = %s WHERE key = %s AND node_id = %s AND epoch = %s"
                    " RETURNING key, node_id, epoch, expires_at",
                    (now + dt.timedelta(seconds=ttl), lease.key, self.node_id, lease.epoch),
                ).fetchone()
            )

        return await self.db.run(extend)

    async def still_held(self, lease: Lease) -> bool:
        def check(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT 1 FROM leases WHERE key = %s AND node_id = %s AND epoch = %s",
                (lease.key, self.node_id, lease.epoch),
            ).fetchone()
            return row is not None

        return await self.db.run(check)

    async def release(self, lease: Lease) -> bool:
        """Give the key up now (a drain): peers may take it at once. False if already lost."""

        def free(conn: Conn) -> bool:
            cur = conn.execute(
                "UPDATE leases SET node_id = NULL, expires_at = NULL WHERE key = %s AND node_id = %s AND epoch = %s",
                (lease.key, self.node_id, lease.epoch),
            )
            if cur.rowcount == 1:
                notify(conn, RELEASED, self.node_id)  # a peer takes the key now, not at its poll
            return cur.rowcount == 1

        return await self.db.run(free)

    async def holder(self, key: str) -> Lease | None:
        def read(conn: Conn) -> Lease | None:
            return _lease(
                conn.execute(
                    "SELECT key, node_id, epoch, expires_at FROM leases WHERE key = %s AND node_id IS NOT NULL", (key,)
                ).fetchone()
            )

        return await self.db.run(read)

    async def release_all(self) -> int:
        """Every lease this node holds, at the end of a drain."""

        def free(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE leases SET node_id = NULL, expires_at = NULL WHERE node_id = %s", (self.node_id,)
            )
            if cur.rowcount:
                notify(conn, RELEASED, self.node_id)
            return cur.rowcount

        return await self.db.run(free)
