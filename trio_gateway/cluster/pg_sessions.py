"""Sessions in PostgreSQL (SPEC 6 and 12): one row per session, owned by one node at a time.

Ownership is the lease `session:<id>` (`leases.py`), taken at the session's first write on a
node; its epoch stamps every later write. A write checks, in its own transaction and under a
share lock on the lease row, that this node still holds the lease under that epoch; when it
does not (a peer took the session over), the write changes nothing and the gateway is told to
forget the session here, which cancels the session's scope: one node's turns never overwrite
another's.

Sessions a node leaves behind (it stopped, releasing its leases, or died, so its heartbeat
went stale) with turns pending are adopted by a survivor within `pollSeconds`: it takes the
lease, reads the row, and hands the record to the gateway's resume path.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import attrs
import trio
from psycopg.types.json import Jsonb

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.leases import Leases
from trio_gateway.errors import CronSlotTakenError
from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.storage.base import CRON_SLOT
from trio_gateway.storage.sessions import SessionRecord, record_from_json

# Ownership is judged by heartbeat; the expiry is only a backstop for a live node that stopped
# writing its heartbeat and still runs. A session lease never needs renewing while its node lives.
_SESSION_LEASE_SECONDS = 7 * 24 * 3600.0
_ADOPT_BATCH = 100


def _lease_key(session_id: str) -> str:
    return f"session:{session_id}"


def _claim_cron_slot(conn: Conn, slot: tuple[str, float], now: dt.datetime) -> None:
    """Compare-and-set on the cron entry's next fire time, in the caller's transaction (the
    one writing the run's turn): the slot `now` falls in fires once in the whole cluster, on
    whichever node's timer reaches it first. Slots are aligned on the epoch, so every node
    agrees on them whatever its start time."""
    cron_id, every = slot
    epoch_seconds = now.timestamp()
    next_fire = dt.datetime.fromtimestamp((epoch_seconds // every + 1) * every, dt.UTC)
    cur = conn.execute(
        "INSERT INTO cron_slots AS c (cron_id, next_fire_at) VALUES (%s, %s)"
        " ON CONFLICT (cron_id) DO UPDATE SET next_fire_at = EXCLUDED.next_fire_at WHERE c.next_fire_at <= %s",
        (cron_id, next_fire, now),
    )
    if cur.rowcount != 1:
        raise CronSlotTakenError(f"cron {cron_id}: this slot fired on another node")


@attrs.define
class PgSessionStore:
    db: Database
    leases: Leases
    log: EventLog
    now: Callable[[], dt.datetime]
    # The gateway's `forget_session`: a refused write cancels the session here.
    on_lost: Callable[[str], None] = lambda _session_id: None
    _epochs: dict[str, int] = attrs.Factory(dict)
    _locks: dict[str, trio.Lock] = attrs.Factory(dict)

    async def load_all(self) -> list[SessionRecord]:
        """Nothing at start: sessions come to a node as it creates them or adopts them
        (`adopt_orphans`), once it has joined the cluster."""
        await trio.lowlevel.checkpoint()
        return []

    async def load(self, session_id: str) -> SessionRecord | None:
        """One session read back (an evicted one: idle, so no peer adopts it meanwhile)."""
        return await self._read(session_id)

    async def save(self, record: SessionRecord) -> None:
        # One write of a session at a time, in order (each write is the whole record).
        lock = self._locks.setdefault(record.id, trio.Lock())
        async with lock:
            epoch = self._epochs.get(record.id)
            if epoch is None:
                lease = await self.leases.acquire(_lease_key(record.id), self.now(), ttl=_SESSION_LEASE_SECONDS)
                if lease is None:
                    return self._lost(record.id)
                epoch = self._epochs[record.id] = lease.epoch
            if not await self._write(record, epoch):
                self._lost(record.id)

    async def _write(self, record: SessionRecord, epoch: int) -> bool:
        doc = Jsonb(codec.unstructure(record))
        now = self.now()
        me, key = self.leases.node_id, _lease_key(record.id)
        slot = CRON_SLOT.get()

        def write(conn: Conn) -> bool:
            held = conn.execute(
                "SELECT 1 FROM leases WHERE key = %s AND node_id = %s AND epoch = %s FOR SHARE", (key, me, epoch)
            ).fetchone()
            if held is None:
                return False
            if slot is not None:
                _claim_cron_slot(conn, slot, now)  # raises (and rolls back) when fired elsewhere
            conn.execute(
                "INSERT INTO sessions (id, record, pending_turns, updated_at) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record,"
                " pending_turns = EXCLUDED.pending_turns, updated_at = EXCLUDED.updated_at",
                (record.id, doc, len(record.turns), now),
            )
            return True

        return await self.db.run(write)

    def _lost(self, session_id: str) -> None:
        self._epochs.pop(session_id, None)
        self.log.warn("CLUSTER", "Session write refused: another node owns it", sessionId=session_id)
        self.on_lost(session_id)

    async def adopt_orphans(self) -> list[SessionRecord]:
        """Take over sessions with pending turns whose owner is gone; returns their records."""
        now = self.now()
        cutoff = now - dt.timedelta(seconds=self.leases.dead_after_seconds)

        def candidates(conn: Conn) -> list[str]:
            rows = conn.execute(
                "SELECT s.id FROM sessions s LEFT JOIN leases l ON l.key = 'session:' || s.id"
                " LEFT JOIN nodes n ON n.node_id = l.node_id"
                " WHERE s.pending_turns > 0 AND (l.node_id IS NULL OR l.expires_at < %(now)s"
                "  OR (l.node_id <> %(me)s"
                "      AND (n.node_id IS NULL OR n.state = 'stopped' OR n.heartbeat_at < %(cutoff)s)))"
                " ORDER BY s.id LIMIT %(limit)s",
                {"now": now, "cutoff": cutoff, "me": self.leases.node_id, "limit": _ADOPT_BATCH},
            ).fetchall()
            return [str(r[0]) for r in rows]

        adopted = []
        for session_id in await self.db.run(candidates):
            lease = await self.leases.acquire(_lease_key(session_id), now, ttl=_SESSION_LEASE_SECONDS)
            if lease is None:
                continue  # another survivor was quicker
            record = await self._read(session_id)
            if record is None:
                continue
            self._epochs[session_id] = lease.epoch
            adopted.append(record)
            self.log.warn("CLUSTER", "Adopted a session left with turns pending", sessionId=session_id)
        return adopted

    async def _read(self, session_id: str) -> SessionRecord | None:
        def read(conn: Conn) -> Any:
            row = conn.execute("SELECT record FROM sessions WHERE id = %s", (session_id,)).fetchone()
            return None if row is None else row[0]

        doc = await self.db.run(read)
        if doc is None:
            return None
        try:
            return record_from_json(doc)
        except Exception as exc:  # a row this version cannot read: leave it for a person
            self.log.error("CLUSTER", "Unreadable session row left alone", sessionId=session_id, error=str(exc)[:200])
            return None
