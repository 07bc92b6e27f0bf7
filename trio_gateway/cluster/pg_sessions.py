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

One conversation, one session, cluster-wide (SPEC 12, `handoffs.py`): the store is also the
gateway's session directory. A turn for a session a live peer owns is written as a handed-off
turn; the owner moves it into its record in the transaction of that record's next write (with
how finished turns ended, for a `wait` on any node). Death and expiry are judged on the
database's clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio
from psycopg.types.json import Jsonb

from trio_gateway.cluster import handoffs
from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.handoffs import lease_key
from trio_gateway.cluster.leases import LIVE_NODE, Leases
from trio_gateway.errors import CronSlotTakenError
from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import CRON_SLOT, HandedOff, HandOff, Located, RemoteOutcome
from trio_gateway.storage.sessions import SessionRecord, TurnRecord, record_from_json

# Ownership is judged by heartbeat; the expiry is only a backstop for a live node that stopped
# writing its heartbeat and still runs. A session lease never needs renewing while its node lives.
_SESSION_LEASE_SECONDS = 7 * 24 * 3600.0
_ADOPT_BATCH = 100


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


# The gateway's table taking sessions over (`Gateway.adopt_sessions`).
Adopt = Callable[[list[SessionRecord]], Awaitable[None]]


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
    # Handed-off turns in a record here, by session: the session's next write deletes their rows.
    _absorbed: dict[str, list[int]] = attrs.Factory(dict)
    # Rows being taken (absorbed, or being read): the next look skips them.
    _taking: set[int] = attrs.Factory(set)
    # How turns ended, by session, written with the session's next write.
    _outcomes: dict[str, list[tuple[str, str, bool, str]]] = attrs.Factory(dict)
    # Sessions being taken over here, until their records are in the gateway's table
    # (`arrived`): another take-over of one waits, or it would find the lease ours already and
    # the table without the session, and its turn would open a fresh record over the stored one.
    _arriving: dict[str, trio.Event] = attrs.Factory(dict)
    # Sessions whose lease a take-over here took but whose record it could not read (the
    # database failed meanwhile): no peer adopts them (the lease is a live node's), so this
    # node's sweep tries them again.
    _unread: set[str] = attrs.Factory(set)

    @property
    def me(self) -> str:
        return self.leases.node_id

    async def load_all(self) -> list[SessionRecord]:
        """Nothing at start: sessions come to a node as it creates them or adopts them
        (`adopt_orphans`, `locate`), once it has joined the cluster."""
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
                lease = await self.leases.acquire(lease_key(record.id), ttl=_SESSION_LEASE_SECONDS)
                if lease is None:
                    return self._lost(record.id)
                epoch = self._epochs[record.id] = lease.epoch
            absorbed = list(self._absorbed.get(record.id, ()))
            outcomes = list(self._outcomes.get(record.id, ()))
            if not await self._write(record, epoch, absorbed, outcomes):
                return self._lost(record.id)
            self._settled(record.id, absorbed, len(outcomes))

    def _settled(self, session_id: str, absorbed: list[int], outcomes: int) -> None:
        left = [seq for seq in self._absorbed.pop(session_id, []) if seq not in absorbed]
        if left:
            self._absorbed[session_id] = left
        self._taking.difference_update(absorbed)
        if outcomes:
            del self._outcomes[session_id][:outcomes]

    async def _write(
        self, record: SessionRecord, epoch: int, absorbed: list[int], outcomes: list[tuple[str, str, bool, str]]
    ) -> bool:
        doc = Jsonb(codec.unstructure(record))
        now = self.now()
        key = lease_key(record.id)
        slot = CRON_SLOT.get()

        def write(conn: Conn) -> bool:
            held = conn.execute(
                "SELECT 1 FROM leases WHERE key = %s AND node_id = %s AND epoch = %s FOR SHARE", (key, self.me, epoch)
            ).fetchone()
            if held is None:
                return False
            if slot is not None:
                _claim_cron_slot(conn, slot, now)  # raises (and rolls back) when fired elsewhere
            conn.execute(
                "INSERT INTO sessions (id, record, pending_turns, updated_at) VALUES (%s, %s, %s, now())"
                " ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record,"
                " pending_turns = EXCLUDED.pending_turns, updated_at = EXCLUDED.updated_at",
                (record.id, doc, len(record.turns)),
            )
            handoffs.settle_absorbed(conn, absorbed, outcomes)
            return True

        return await self.db.run(write)

    # --- fencing the session's notices (`pg_queue.SessionFence`) ------------------------------

    def epoch_of(self, session_id: str) -> int | None:
        return self._epochs.get(session_id)

    def refused(self, session_id: str) -> None:
        self._lost(session_id)

    def _lost(self, session_id: str) -> None:
        self._epochs.pop(session_id, None)
        # Rows it had absorbed stay in the database: the owner takes them.
        self._taking.difference_update(self._absorbed.pop(session_id, []))
        self._outcomes.pop(session_id, None)
        self.log.warn("CLUSTER", "Session write refused: another node owns it", sessionId=session_id)
        self.on_lost(session_id)

    async def adopt_orphans(self, adopt: Adopt | None = None) -> list[SessionRecord]:
        """Take over sessions with pending turns (in their record, or handed to them) whose
        owner is gone; returns their records, the handed-off turns merged in. Each goes to
        `adopt` (the gateway's table) as soon as it is taken over, before the next one: a turn
        of its conversation arriving meanwhile waits for it (`_take_over`), and a failure half
        way leaves no session taken here but missing from the table."""
        params = {"me": self.me, "dead_after": self.leases.dead_after_seconds, "limit": _ADOPT_BATCH}

        def candidates(conn: Conn) -> list[str]:
            rows = conn.execute(
                "SELECT s.id FROM (SELECT id FROM sessions WHERE pending_turns > 0"
                "  UNION SELECT session_id FROM handoffs) s"
                " LEFT JOIN leases l ON l.key = 'session:' || s.id"
                " WHERE l.node_id IS NULL OR l.expires_at < now()"
                f"  OR (l.node_id <> %(me)s AND NOT {LIVE_NODE.format(node='l.node_id')})"
                " ORDER BY s.id LIMIT %(limit)s",
                params,
            ).fetchall()
            return [str(r[0]) for r in rows]

        adopted = []
        for session_id in sorted(set(await self.db.run(candidates)) | self._unread):
            record = await self._take_over(session_id)
            if record is None:
                continue
            try:
                self.log.warn("CLUSTER", "Adopted a session left with turns pending", sessionId=session_id)
                if adopt is not None:
                    await adopt([record])
            finally:
                self.arrived(session_id)
            adopted.append(record)
        return adopted

    def arrived(self, session_id: str) -> None:
        """A record `_take_over` returned is in the gateway's table now (or will never be)."""
        arriving = self._arriving.pop(session_id, None)
        if arriving is not None:
            arriving.set()

    async def _take_over(self, session_id: str) -> SessionRecord | None:
        """The session's lease, then its record with the turns handed to it (None: another
        node was quicker, or there is nothing to read). A record returned is arriving until
        the caller says `arrived`; one take-over of a session at a time here, each after the
        last one's record arrived."""
        while (arriving := self._arriving.get(session_id)) is not None:
            await arriving.wait()
        self._arriving[session_id] = trio.Event()
        record = None
        try:
            record = await self._take_over_now(session_id)
        finally:
            if record is None:
                self.arrived(session_id)
        return record

    async def _take_over_now(self, session_id: str) -> SessionRecord | None:
        lease = await self.leases.acquire(lease_key(session_id), ttl=_SESSION_LEASE_SECONDS)
        if lease is None:
            self._unread.discard(session_id)  # another node's now: its to read
            return None
        if self._epochs.get(session_id) == lease.epoch:
            # Ours already, in this very ownership: the copy here is newer than the row (a
            # turn ended here may not be written yet). Read back, it would replace that copy
            # and run or give up its ended turns again (chaos soak, seed 6: a second notice).
            return None

        def read(conn: Conn) -> tuple[Any, list[HandedOff]]:
            row = conn.execute("SELECT record FROM sessions WHERE id = %s", (session_id,)).fetchone()
            return None if row is None else row[0], handoffs.handoffs_of(conn, session_id)

        # The epoch is known here only once the record is read: known before, a failed read
        # left the session "ours already" to the next look, which then opened a fresh record
        # over the stored one.
        self._unread.add(session_id)
        doc, handed = await self.db.run(read)
        self._unread.discard(session_id)
        self._epochs[session_id] = lease.epoch
        record = self._decode(session_id, doc) if doc is not None else None
        if record is None and handed:
            # Reserved and handed turns before its first write: it starts from them.
            first = handed[0]
            record = SessionRecord(session_id, first.agent, first.turn.origin, self.now())
        if record is not None:
            for item in handed:
                record.join(item.turn, item.inbound_id)
                self.absorb(item)  # in the record, or heard already: its row goes either way
        return record

    # --- the session directory (storage.base.SessionDirectory) ------------------------------

    async def locate(
        self, agent_id: str, conversation: Origin | None, session_id: str | None, candidate: str
    ) -> Located:
        key = handoffs.conversation_key(agent_id, conversation)
        dead_after = self.leases.dead_after_seconds

        def find(conn: Conn) -> tuple[str, str | None]:
            sid = session_id or handoffs.reserve(conn, key, candidate)
            if sid is None:
                return candidate, None
            return sid, handoffs.live_owner(conn, sid, self.me, dead_after)

        sid, owner = await self.db.run(find)
        if owner is not None or (sid == candidate and session_id is None):
            return Located(sid, owner=owner)
        record = await self._take_over(sid)
        if record is None and self._epochs.get(sid) is None:
            return Located(sid, owner="?")  # another node took it first: hand it the turn
        if session_id is not None and record is None:
            await self.db.run(lambda conn: handoffs.point(conn, key, sid))
        return Located(sid, record=record)

    async def hand_off(self, session_id: str, agent_id: str, turn: TurnRecord, inbound_id: str | None) -> HandOff:
        dead_after = self.leases.dead_after_seconds
        return await self.db.run(
            lambda conn: handoffs.hand_off(conn, session_id, agent_id, turn, inbound_id, self.me, dead_after)
        )

    async def handed_off(self, session_id: str | None = None) -> list[HandedOff]:
        skip = sorted(self._taking)
        return await self.db.run(lambda conn: handoffs.owned_handoffs(conn, self.me, skip, session_id))

    def absorb(self, item: HandedOff) -> None:
        self._taking.add(item.seq)
        self._absorbed.setdefault(item.session_id, []).append(item.seq)

    def note_outcome(self, session_id: str, turn_id: str, ok: bool, text: str) -> None:
        self._outcomes.setdefault(session_id, []).append((session_id, turn_id, ok, text))

    async def outcome(self, session_id: str, turn_id: str) -> RemoteOutcome:
        return await self.db.run(lambda conn: handoffs.outcome(conn, session_id, turn_id))

    async def forget_old_outcomes(self) -> None:
        await self.db.run(handoffs.forget_old_outcomes)

    async def _read(self, session_id: str) -> SessionRecord | None:
        def read(conn: Conn) -> Any:
            row = conn.execute("SELECT record FROM sessions WHERE id = %s", (session_id,)).fetchone()
            return None if row is None else row[0]

        doc = await self.db.run(read)
        return None if doc is None else self._decode(session_id, doc)

    def _decode(self, session_id: str, doc: Any) -> SessionRecord | None:
        try:
            return record_from_json(doc)
        except Exception as exc:  # a row this version cannot read: leave it for a person
            self.log.error("CLUSTER", "Unreadable session row left alone", sessionId=session_id, error=str(exc)[:200])
            return None
