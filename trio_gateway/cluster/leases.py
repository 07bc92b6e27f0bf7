"""A lease per key with an epoch: one node at a time holds `inbound:<channel>:<account>` (so a
listener's cursor never forks) or `session:<id>` (so a session's turns run on one node).

    leases = Leases(db, node_id, dead_after_seconds)
    lease = await leases.acquire("inbound:telegram:bot-1", ttl=30)   # None: another node has it
    lease = await leases.renew(lease, ttl=30)                        # None: lost it; stop at once
    ok = await leases.still_held(lease)                                   # before a fenced write
    await leases.release(lease)                                           # at a drain: peers take it now

A key is free when nobody holds it, when its lease ran out, or when its holder is dead (no
heartbeat for `dead_after_seconds`, or stopped): takeover follows the heartbeat, the expiry is
only a backstop. The epoch moves on at every change of holder, never on a renewal, so a write
stamped with an epoch is refused once anyone else has held the key since. Every operation is
one statement; the renew and release are fenced by the epoch. Every time in a decision (expiry,
"dead after") is the database's `now()`, never a node's clock (SPEC 12): nodes need no
synchronised clocks, and a node whose clock is 30 s off neither steals nor keeps a key by it.

(Used by session ownership, `cluster status` (which counts `session:` leases as sessions owned)
and the inbound listeners, `cluster/inbound.py`.)
"""

from __future__ import annotations

import datetime as dt
from typing import cast

import attrs

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.notify import RELEASED, notify

# SQL: node `{node}` is alive, judged on the database's clock: it has not stopped and its last
# heartbeat (written as the database's `now()`) is at most `%(dead_after)s` seconds old.
LIVE_NODE = (
    "EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = {node} AND n.state <> 'stopped'"
    " AND n.heartbeat_at >= now() - make_interval(secs => %(dead_after)s::float8))"
)


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

    async def acquire(self, key: str, *, ttl: float) -> Lease | None:
        """Take (or renew, keeping the epoch) `key` if it is free or already ours."""
        params = {"key": key, "me": self.node_id, "ttl": ttl, "dead_after": self.dead_after_seconds}

        def take(conn: Conn) -> Lease | None:
            return _lease(
                conn.execute(
                    "INSERT INTO leases AS l (key, node_id, epoch, expires_at)"
                    " VALUES (%(key)s, %(me)s, 1, now() + make_interval(secs => %(ttl)s::float8))"
                    " ON CONFLICT (key) DO UPDATE SET node_id = %(me)s, expires_at = EXCLUDED.expires_at,"
                    "  epoch = l.epoch + CASE WHEN l.node_id = %(me)s THEN 0 ELSE 1 END"
                    " WHERE l.node_id IS NULL OR l.node_id = %(me)s OR l.expires_at < now()"
                    f"  OR NOT {LIVE_NODE.format(node='l.node_id')}"
                    " RETURNING key, node_id, epoch, expires_at",
                    params,
                ).fetchone()
            )

        return await self.db.run(take)

    async def renew(self, lease: Lease, *, ttl: float) -> Lease | None:
        """Extend a lease still held under its epoch; None when it was lost."""

        def extend(conn: Conn) -> Lease | None:
            return _lease(
                conn.execute(
                    "UPDATE leases SET expires_at = now() + make_interval(secs => %s::float8)"
                    " WHERE key = %s AND node_id = %s AND epoch = %s RETURNING key, node_id, epoch, expires_at",
                    (ttl, lease.key, self.node_id, lease.epoch),
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
