"""The delivery queue in PostgreSQL (SPEC 7 and 12): the same contract as the file queue, shared
by every node.

One row per entry; `entry` holds the SPEC 7 document, the columns beside it what claiming needs.
A claim sets `claim_node`, moves `claim_fence` on by one and sets a lease; a claim to send also
records `send_started_at` in the same statement. Every settle (ack, retry, hold, release, dead
letter, reroute) names the fence it claimed under: when the claim was taken over meanwhile (its
node was judged dead, or its lease ran out) the settle matches no row and changes nothing, so a
node that lost the claim can never undo the new holder's work. An enqueue is `INSERT ... ON
CONFLICT (idempotency_key) DO NOTHING`: a notice enqueued twice (a turn resumed by another
node) is one row.

A notice of a session's turn (`TURN_SESSION`) is fenced like the session's own writes
(`pg_sessions.py`): its transaction takes a share lock on the session's lease row and writes
the entry only while this node holds it at the epoch the session store knows. A node that lost
the session (SIGSTOPped while a peer took it over and ended the turn with a notice) is refused:
nothing written, the session forgotten here, `SessionElsewhereError` raised (never retried),
so a turn ends in one reply or one notice (SPEC 12).

Enqueues and acks from concurrent callers share one statement (`GroupCommit`): the database's
group commit does the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, cast

import attrs
from psycopg.types.json import Jsonb

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.cluster.fence import SessionFence, TurnNotice, fenced_out
from trio_gateway.cluster.leases import LIVE_NODE
from trio_gateway.cluster.notify import DELIVERY, notify
from trio_gateway.errors import NotFoundError, SessionElsewhereError
from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry, check_id, entry_from_json, entry_to_json
from trio_gateway.storage.base import TURN_SESSION, Claimed, NotDue
from trio_gateway.storage.group_commit import GroupCommit
from trio_gateway.storage.ids import IdGenerator

_ENTRY_COLUMNS = "entry, send_started_at"

# SPEC 15 "Order", the rule of `delivery.scheduler` as the database states it (only the database
# sees what other nodes have in flight): an entry `d` may be claimed only when no other unsettled
# entry of its conversation is older, or claimed. An entry in flight stays `pending` (claimed)
# until it is acked (deleted) or dead-lettered (`failed`), so the next one waits for exactly that;
# a head waiting for its retry is pending and older, so it holds the rest.
HEAD_OF_CONVERSATION = (
    "NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.conversation = d.conversation AND o.state = 'pending'"
    " AND o.id <> d.id AND (o.id < d.id OR o.claim_node IS NOT NULL))"
)


# What the claim's transaction lock is taken on: an entry without a conversation (no `to`) is
# its own. The lock's first key keeps these apart from any other advisory lock in the database.
_CONVERSATION_KEY = "coalesce(d.conversation, d.id)"
_CLAIM_LOCK_CLASS = 0x74726963  # "tric"
# A claim's lease ends on the database's clock, like every lease (SPEC 12).
_LEASE_UNTIL = "now() + make_interval(secs => %(lease)s::float8)"


def _entry(row_entry: Any, send_started_at: dt.datetime | None) -> DeliveryEntry:
    # The column is the truth for the send mark (a claim sets it without rewriting `entry`).
    return attrs.evolve(entry_from_json(row_entry), send_started_at=send_started_at)


def _doc(entry: DeliveryEntry) -> Jsonb:
    return Jsonb(entry_to_json(entry))


@attrs.define
class PgDeliveryQueue:
    db: Database
    node_id: str
    log: EventLog
    # The gateway's wall clock (virtual under a MockClock), for due times and the send mark:
    # leases and deaths are judged on the database's clock, never on this one (SPEC 12).
    now: Callable[[], dt.datetime]
    lease_seconds: float = 60.0
    dead_after_seconds: float = 10.0
    # NOTIFY peers of claimable entries (False: a poll-only reference, `bench_wakeup.py`).
    wake_peers: bool = True
    # Fences turns' notices (set by `ClusterNode`); None: no notice is fenced.
    fence: SessionFence | None = None
    _ids: IdGenerator = attrs.Factory(IdGenerator)
    _enqueues: GroupCommit[TurnNotice, bool] = attrs.field(init=False)
    _acks: GroupCommit[Claimed, None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._enqueues = GroupCommit(self._enqueue_batch)
        self._acks = GroupCommit(self._ack_batch)

    def new_id(self, when: dt.datetime) -> str:
        return self._ids.new(when)

    # --- writing new entries ----------------------------------------------------------------

    async def _enqueue_batch(self, items: list[TurnNotice]) -> list[bool]:
        """Write the entries not fenced out; True for each that was (or exists already)."""

        def insert(conn: Conn) -> tuple[set[int], list[str]]:
            out = fenced_out(conn, self.node_id, items)
            entries = [item.entry for n, item in enumerate(items) if n not in out]
            if not entries:
                return out, []
            rows = conn.execute(
                "INSERT INTO deliveries (id, idempotency_key, state, next_attempt_at, entry)"
                " SELECT i, k, 'pending', n, e FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::jsonb[])"
                " AS t(i, k, n, e) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
                (
                    [e.id for e in entries],
                    [e.idempotency_key for e in entries],
                    [e.next_attempt_at for e in entries],
                    [_doc(e) for e in entries],
                ),
            ).fetchall()
            if rows:
                self._wake(conn)
            return out, [str(r[0]) for r in rows]

        out, ids = await self.db.run(insert)
        written = set(ids)
        for n, item in enumerate(items):
            entry = item.entry
            if n not in out and entry.id not in written:
                self.log.info(
                    "DELIVERY",
                    f"Channel={entry.channel} id={entry.id} not enqueued: an entry with its idempotency key "
                    "exists already",
                    idempotencyKey=entry.idempotency_key,
                )
        return [n not in out for n in range(len(items))]

    def _wake(self, conn: Conn) -> None:
        """Peers' delivery workers claim at once (on commit), not at their next poll."""
        if self.wake_peers:
            notify(conn, DELIVERY, self.node_id)

    async def enqueue(self, entry: DeliveryEntry) -> None:
        """Durable when this returns (committed); group-committed with concurrent enqueues.
        Raises `SessionElsewhereError` (nothing written) for a notice of a session this node
        lost (module docstring)."""
        session_id = TURN_SESSION.get() if self.fence is not None else None
        if session_id is None or self.fence is None:
            await self._enqueues.submit(TurnNotice(entry))
            return
        epoch = self.fence.epoch_of(session_id)
        if not await self._enqueues.submit(TurnNotice(entry, session_id, epoch)):
            self.log.warn(
                "DELIVERY",
                f"Channel={entry.channel} id={entry.id} not enqueued: another node owns session {session_id} now",
                idempotencyKey=entry.idempotency_key,
            )
            self.fence.refused(session_id)
            raise SessionElsewhereError(f"session {session_id} is owned by another node; its notice is theirs")

    # --- reading --------------------------------------------------------------------------

    async def _select(self, where: str, params: tuple[Any, ...] = ()) -> list[DeliveryEntry]:
        def read(conn: Conn) -> list[DeliveryEntry]:
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM deliveries WHERE {where} ORDER BY id", params)
            return [_entry(r[0], cast(dt.datetime | None, r[1])) for r in rows.fetchall()]

        return await self.db.run(read)

    async def list_pending(self) -> list[DeliveryEntry]:
        return await self._select("state = 'pending' AND claim_node IS NULL")

    async def list_inflight(self) -> list[DeliveryEntry]:
        return await self._select("state = 'pending' AND claim_node IS NOT NULL")

    async def list_failed(self) -> list[DeliveryEntry]:
        return await self._select("state = 'failed'")

    async def failed_page(self, after: str | None, limit: int) -> tuple[list[DeliveryEntry], int]:
        def read(conn: Conn) -> tuple[list[DeliveryEntry], int]:
            rows = conn.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM deliveries WHERE state = 'failed' AND id > %s ORDER BY id LIMIT %s",
                (after or "", limit),
            ).fetchall()
            total = conn.execute("SELECT count(*) FROM deliveries WHERE state = 'failed'").fetchone()
            count = cast(int, total[0]) if total else 0
            return [_entry(r[0], cast(dt.datetime | None, r[1])) for r in rows], count

        return await self.db.run(read)

    async def due(self, now: dt.datetime) -> list[DeliveryEntry]:
        return await self._select("state = 'pending' AND claim_node IS NULL AND next_attempt_at <= %s", (now,))

    async def pending_ids(self) -> list[str]:
        return [e.id for e in await self.list_pending()]

    async def peek(self, entry_ids: list[str]) -> dict[str, DeliveryEntry]:
        found = await self._select("state = 'pending' AND claim_node IS NULL AND id = ANY(%s)", (entry_ids,))
        return {e.id: e for e in found}

    async def counts(self) -> dict[str, int]:
        def count(conn: Conn) -> dict[str, int]:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'failed')"
                " FROM deliveries"
            ).fetchone()
            assert row is not None
            return {"pending": cast(int, row[0]), "failed": cast(int, row[1])}

        return await self.db.run(count)

    # --- claiming -------------------------------------------------------------------------

    async def claim_due(self, now: dt.datetime, limit: int) -> list[Claimed]:
        """Up to `limit` due entries nobody holds, oldest due first, claimed and marked as
        sending in one statement. `SKIP LOCKED`: nodes claiming at once never wait on each
        other and never get the same row."""

        params = {"now": now, "limit": limit, "node": self.node_id, "lease": self.lease_seconds}

        def claim(conn: Conn) -> list[Claimed]:
            # Under READ COMMITTED two claimers' snapshots may each see a different head of one
            # conversation as free (one's claim of the head not yet committed, the other past
            # an ack): each claims "its" head and two sends of one conversation are in flight.
            # So first the conversations with a due head, then a transaction lock on each (one
            # another claimer holds is skipped this round, never waited for), then the claim,
            # whose statement reads a snapshot taken after every lock was granted.
            heads = conn.execute(
                f"SELECT {_CONVERSATION_KEY} FROM deliveries d WHERE d.state = 'pending' AND d.claim_node IS NULL"
                f" AND d.next_attempt_at <= %(now)s AND {HEAD_OF_CONVERSATION}"
                " ORDER BY d.next_attempt_at, d.id LIMIT %(limit)s",
                params,
            ).fetchall()
            mine = conn.execute(
                "SELECT array_agg(c) FROM unnest(%s::text[]) AS c WHERE pg_try_advisory_xact_lock(%s, hashtext(c))",
                (sorted({str(r[0]) for r in heads}), _CLAIM_LOCK_CLASS),
            ).fetchone()
            if mine is None or not mine[0]:
                return []
            rows = conn.execute(
                "WITH due AS (SELECT d.id, d.send_started_at AS before FROM deliveries d"
                "  WHERE d.state = 'pending' AND d.claim_node IS NULL AND d.next_attempt_at <= %(now)s"
                f"  AND {_CONVERSATION_KEY} = ANY(%(mine)s) AND {HEAD_OF_CONVERSATION}"
                "  ORDER BY d.next_attempt_at, d.id LIMIT %(limit)s FOR UPDATE OF d SKIP LOCKED)"
                " UPDATE deliveries d SET claim_node = %(node)s, claim_fence = d.claim_fence + 1,"
                f"  lease_until = {_LEASE_UNTIL}, send_started_at = %(now)s"
                " FROM due WHERE d.id = due.id RETURNING d.claim_fence, due.before, d.entry",
                {**params, "mine": mine[0]},
            ).fetchall()
            claims = [
                Claimed(_entry(r[2], now), resend_of=cast(dt.datetime | None, r[1]), fence=cast(int, r[0]))
                for r in rows
            ]
            return sorted(claims, key=lambda c: (c.entry.next_attempt_at, c.entry.id))

        return await self.db.run(claim)

    async def _claim_one(self, entry_id: str, now: dt.datetime, *, mark: bool) -> Claimed | NotDue | None:
        def claim(conn: Conn) -> Claimed | NotDue | None:
            row = conn.execute(
                "SELECT next_attempt_at, send_started_at, entry FROM deliveries"
                " WHERE id = %s AND state = 'pending' AND claim_node IS NULL FOR UPDATE SKIP LOCKED",
                (entry_id,),
            ).fetchone()
            if row is None:
                return None  # held by another node, dead, or gone
            due_at, before = cast(dt.datetime, row[0]), cast(dt.datetime | None, row[1])
            entry = _entry(row[2], before)
            if due_at > now:
                return NotDue(entry.next_attempt_at, entry.channel, entry.account_id)
            started = now if mark else before
            fence = conn.execute(
                "UPDATE deliveries SET claim_node = %s, claim_fence = claim_fence + 1,"
                " lease_until = now() + make_interval(secs => %s::float8),"
                " send_started_at = %s WHERE id = %s RETURNING claim_fence",
                (self.node_id, self.lease_seconds, started, entry_id),
            ).fetchone()
            assert fence is not None
            claimed = attrs.evolve(entry, send_started_at=started)
            return Claimed(claimed, resend_of=before if mark else None, fence=cast(int, fence[0]))

        return await self.db.run(claim)

    async def claim(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        """Take one entry (not for sending: `delivery repair`)."""
        return await self._claim_one(entry_id, now, mark=False)

    async def claim_to_send(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        return await self._claim_one(entry_id, now, mark=True)

    # --- finishing a claim ----------------------------------------------------------------

    def holds(self, entry_id: str) -> bool:
        """Claims here live in the database under a lease, not in this process: there is no
        in-process claim for a cut caller to let go of."""
        return False

    def let_go(self, entry_id: str) -> None:
        """Nothing to drop (see `holds`): a claim this node cannot finish ends with its lease,
        and `recover` (this node's or another's) returns the row to pending."""

    async def _settle(self, claimed: Claimed, assignments: str, params: tuple[Any, ...], *, wake: bool = False) -> bool:
        """Apply `assignments` to the claimed row and end the claim; False (and nothing
        changed) when this node no longer holds it under this fence. `wake`: the row is
        claimable by anyone now (released, or due at once): tell the peers."""

        def update(conn: Conn) -> bool:
            cur = conn.execute(
                f"UPDATE deliveries SET {assignments}, claim_node = NULL, lease_until = NULL"
                " WHERE id = %s AND claim_node = %s AND claim_fence = %s",
                (*params, claimed.entry.id, self.node_id, claimed.fence),
            )
            if wake and cur.rowcount == 1:
                self._wake(conn)
            return cur.rowcount == 1

        held = await self.db.run(update)
        if not held:
            self._lost(claimed)
        return held

    def _lost(self, claimed: Claimed) -> None:
        self.log.warn(
            "DELIVERY",
            f"Channel={claimed.entry.channel} id={claimed.entry.id} claim lost (taken over by another node, "
            "or deleted); this node's outcome changes nothing",
            fence=claimed.fence,
        )

    async def _ack_batch(self, claims: list[Claimed]) -> list[None]:
        def delete(conn: Conn) -> set[str]:
            rows = conn.execute(
                "DELETE FROM deliveries d USING unnest(%s::text[], %s::bigint[]) AS a(id, fence)"
                " WHERE d.id = a.id AND d.claim_fence = a.fence AND d.claim_node = %s RETURNING d.id",
                ([c.entry.id for c in claims], [c.fence for c in claims], self.node_id),
            ).fetchall()
            return {str(r[0]) for r in rows}

        deleted = await self.db.run(delete)
        for claimed in claims:
            if claimed.entry.id not in deleted:
                self._lost(claimed)
        return [None] * len(claims)

    async def ack(self, claimed: Claimed) -> None:
        """The channel accepted it: the row goes. Group-committed with concurrent acks."""
        await self._acks.submit(claimed)

    async def _back_to_pending(self, claimed: Claimed, entry: DeliveryEntry, *, wake: bool = False) -> DeliveryEntry:
        await self._settle(
            claimed,
            "state = 'pending', entry = %s, next_attempt_at = %s, send_started_at = NULL",
            (_doc(entry), entry.next_attempt_at),
            wake=wake,
        )
        return entry

    async def retry_later(self, claimed: Claimed, last_error: str, next_at: dt.datetime) -> DeliveryEntry:
        entry = claimed.entry.retried(last_error, next_at)
        return await self._back_to_pending(claimed, entry)

    async def hold(self, claimed: Claimed, reason: str, next_at: dt.datetime) -> DeliveryEntry:
        entry = claimed.entry.held(reason, next_at)
        return await self._back_to_pending(claimed, entry)

    async def release(self, claimed: Claimed) -> None:
        """A drain or a crash cut the attempt: unclaimed as it is, attempts unchanged, its
        `send_started_at` kept (the send may have reached the channel)."""
        await self._settle(claimed, "state = 'pending'", (), wake=True)

    async def dead_letter(self, claimed: Claimed, reason: str, now: dt.datetime) -> DeliveryEntry:
        entry = claimed.entry.dead(reason, now)
        await self._settle(claimed, "state = 'failed', entry = %s, send_started_at = NULL", (_doc(entry),))
        return entry

    async def reroute(
        self, claimed: Claimed, *, channel: str, to: str, account_id: str | None, now: dt.datetime, why: str
    ) -> DeliveryEntry:
        entry = claimed.entry.rerouted(channel=channel, to=to, account_id=account_id, now=now, why=why)
        return await self._back_to_pending(claimed, entry, wake=True)

    # --- operator actions and recovery ----------------------------------------------------

    async def retry_dead(self, entry_id: str, now: dt.datetime) -> DeliveryEntry:
        check_id(entry_id)

        def move(conn: Conn) -> DeliveryEntry:
            row = conn.execute(
                "SELECT entry FROM deliveries WHERE id = %s AND state = 'failed' FOR UPDATE", (entry_id,)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no dead letter with id {entry_id}")
            entry = entry_from_json(row[0]).revived(now)
            conn.execute(
                "UPDATE deliveries SET state = 'pending', entry = %s, next_attempt_at = %s, send_started_at = NULL,"
                " claim_node = NULL, lease_until = NULL WHERE id = %s",
                (_doc(entry), now, entry_id),
            )
            self._wake(conn)
            return entry

        return await self.db.run(move)

    async def recover(self) -> list[str]:
        """Take over claims whose node is dead (no heartbeat for `dead_after_seconds`, or
        stopped) and, as a backstop only, claims whose lease ran out, this node's own
        included: a claim whose statement committed after the call was given up, or whose
        settle failed, is held by no attempt here, and with no live peer nobody else would
        ever take it back. Their `send_started_at` stays: the next send of each is logged as
        a possible duplicate."""

        def take(conn: Conn) -> list[tuple[str, str]]:
            rows = conn.execute(
                "WITH gone AS (SELECT d.id, d.claim_node FROM deliveries d"
                "  WHERE d.claim_node IS NOT NULL AND (d.lease_until < now() OR (d.claim_node <> %(me)s"
                f"   AND NOT {LIVE_NODE.format(node='d.claim_node')}))"
                "  FOR UPDATE OF d SKIP LOCKED)"
                " UPDATE deliveries d SET claim_node = NULL, lease_until = NULL FROM gone"
                " WHERE d.id = gone.id RETURNING d.id, gone.claim_node",
                {"me": self.node_id, "dead_after": self.dead_after_seconds},
            ).fetchall()
            if rows:
                self._wake(conn)
            return [(str(r[0]), str(r[1])) for r in rows]

        taken = await self.db.run(take)
        by_node: dict[str, int] = {}
        for _, node in taken:
            by_node[node] = by_node.get(node, 0) + 1
        for node, n in sorted(by_node.items()):
            if node == self.node_id:
                what = f"Took back {n} delivery claim(s) of this node whose lease ran out unfinished"
            else:
                what = f"Took over {n} delivery claim(s) of node {node}"
            self.log.warn("CLUSTER", what, node=self.node_id)
        return [entry_id for entry_id, _ in taken]

    async def release_own(self) -> int:
        """Unclaim everything this node id holds: at start (claims of an earlier life under
        the same id) and as the last act of a drain."""

        def release(conn: Conn) -> int:
            cur = conn.execute(
                "UPDATE deliveries SET claim_node = NULL, lease_until = NULL WHERE claim_node = %s", (self.node_id,)
            )
            if cur.rowcount:
                self._wake(conn)
            return cur.rowcount

        return await self.db.run(release)
