"""Sessions in cluster mode: one owner at a time, a write under a lost epoch is refused and
the node told to forget the session, orphans with pending turns are adopted."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import psycopg
import pytest
from helpers import age_heartbeat

from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.errors import CronSlotTakenError, SessionElsewhereError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import ClusterConfig
from trio_gateway.policy.entry import DeliveryEntry, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import CRON_SLOT, TURN_SESSION
from trio_gateway.storage.sessions import SessionRecord, TurnRecord

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5)


@attrs.define
class Clock:
    at: dt.datetime = T0

    def now(self) -> dt.datetime:
        return self.at


@attrs.define
class Member:
    node: ClusterNode
    clock: Clock
    lost: list[str] = attrs.Factory(list)


@pytest.fixture
async def members(pg_dsn: str) -> AsyncIterator[Callable[[str], Awaitable[Member]]]:
    made: list[Database] = []

    async def make(node_id: str) -> Member:
        db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=2)
        made.append(db)
        clock = Clock()
        node = ClusterNode.create(db, attrs.evolve(CLUSTER, node_id=node_id), EventLog([]), clock.now, lease_seconds=60)
        node.sessions.now = clock.now
        await node.start()
        member = Member(node, clock)
        node.sessions.on_lost = member.lost.append
        return member

    yield make
    for db in made:
        db.pool.close()


def record(turns: int = 1) -> SessionRecord:
    origin = Origin("console", "me")
    rec = SessionRecord("s-ab12cd34-1-1", "main", origin, T0)
    rec.turns = [TurnRecord(f"turn-s-1-{i}", "hello", origin) for i in range(turns)]
    return rec


def stored(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id, pending_turns, record->'turns'->0->>'prompt' FROM sessions").fetchall()


async def test_a_second_node_cannot_write_a_session_it_does_not_own(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    a, b = await members("a"), await members("b")
    await a.node.sessions.save(record())
    theirs = record()
    theirs.turns[0].prompt = "overwritten?"
    await b.node.sessions.save(theirs)
    assert b.lost == [theirs.id]
    assert stored(pg_dsn) == [(theirs.id, 1, "hello")]
    # The owner goes on writing.
    done = record(turns=0)
    await a.node.sessions.save(done)
    assert stored(pg_dsn) == [(done.id, 0, None)]
    assert a.lost == []


async def test_a_dead_owners_pending_session_is_adopted_and_its_old_owner_fenced_out(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    a, b = await members("a"), await members("b")
    await a.node.sessions.save(record())
    assert await b.node.sessions.adopt_orphans() == []  # a is alive
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 1)  # on the database's clock
    await b.node.heartbeat()
    [adopted] = await b.node.sessions.adopt_orphans()
    assert [t.id for t in adopted.turns] == ["turn-s-1-0"]
    assert await b.node.sessions.adopt_orphans() == []  # once
    # a comes back (a stalled process, not a dead one): its next write is refused.
    late = record()
    late.turns[0].prompt = "late"
    await a.node.sessions.save(late)
    assert a.lost == [late.id]
    assert stored(pg_dsn) == [(late.id, 1, "hello")]
    await b.node.sessions.save(record(turns=0))
    assert b.lost == []


async def test_a_leaving_node_hands_its_pending_sessions_over_at_once(
    members: Callable[[str], Awaitable[Member]],
) -> None:
    a, b = await members("a"), await members("b")
    await a.node.sessions.save(record())
    a.node.db.pool.close = lambda **_kw: None  # type: ignore[method-assign]  # the fixture closes it
    await a.node.leave()
    [adopted] = await b.node.sessions.adopt_orphans()  # no waiting for deadAfterSeconds
    assert adopted.id == record().id


async def test_a_stopped_turn_is_kept_in_the_row_and_never_adopted(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    """`/stop` (SPEC 15) on the owner, which then leaves: the stopped turn is in the stored
    record as `stopped`, and no peer takes it over to run it."""
    a, b = await members("a"), await members("b")
    rec = record(turns=2)
    await a.node.sessions.save(rec)
    rec.stop(rec.turns[0])
    rec.stop(rec.turns[0])
    await a.node.sessions.save(rec)
    a.node.db.pool.close = lambda **_kw: None  # type: ignore[method-assign]  # the fixture closes it
    await a.node.leave()
    assert await b.node.sessions.adopt_orphans() == []
    assert stored(pg_dsn) == [(rec.id, 0, None)]
    back = await b.node.sessions.load(rec.id)
    assert back is not None
    assert [(t.id, t.status) for t in back.stopped] == [("turn-s-1-0", "stopped"), ("turn-s-1-1", "stopped")]


async def test_a_cron_slot_fires_once_in_the_cluster(members: Callable[[str], Awaitable[Member]], pg_dsn: str) -> None:
    a, b = await members("a"), await members("b")
    every = 60.0
    slot_start = dt.datetime.fromtimestamp((T0.timestamp() // every) * every, dt.UTC)

    def run(session_id: str) -> SessionRecord:
        rec = record()
        rec.id = session_id
        return rec

    token = CRON_SLOT.set(("digest", every))
    try:
        a.clock.at = b.clock.at = slot_start + dt.timedelta(seconds=5)
        await a.node.sessions.save(run("s-a-1"))
        with pytest.raises(CronSlotTakenError):
            await b.node.sessions.save(run("s-b-1"))  # same slot, a few seconds later on b's timer
        # The next slot: whoever comes first fires it.
        a.clock.at = b.clock.at = slot_start + dt.timedelta(seconds=every + 1)
        await b.node.sessions.save(run("s-b-2"))
        with pytest.raises(CronSlotTakenError):
            await a.node.sessions.save(run("s-a-2"))
    finally:
        CRON_SLOT.reset(token)
    # The refused runs wrote nothing: the turn and the slot are one transaction.
    assert sorted(str(row[0]) for row in stored(pg_dsn)) == ["s-a-1", "s-b-2"]


def notice(member: Member, text: str) -> DeliveryEntry:
    when = member.clock.now()
    entry_id = member.node.queue.new_id(when)
    origin = Origin("console", "me")
    return DeliveryEntry(
        id=entry_id,
        kind="reply",
        channel="console",
        to="me",
        account_id=None,
        agent_id="main",
        requester_origin=origin,
        payload=Payload(text),
        idempotency_key=f"key-{text}",
        created_at=when,
        next_attempt_at=when,
    )


def queued(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT entry->'payload'->>'text' FROM deliveries").fetchall()
        return [str(r[0]) for r in rows]


async def test_a_turns_notice_is_enqueued_only_under_its_sessions_lease(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    """A node stalled mid-turn (SIGSTOP) while a peer adopted the session and ended the turn:
    its late reply is refused, in the transaction that would have written it, and the session
    is forgotten here; the owner's notice and any notice of no session go through."""
    a, b = await members("a"), await members("b")
    rec = record()
    await a.node.sessions.save(rec)
    mine = TURN_SESSION.set(rec.id)
    try:
        await a.node.queue.enqueue(notice(a, "a owns it"))
        await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 1)
        await b.node.heartbeat()
        assert [r.id for r in await b.node.sessions.adopt_orphans()] == [rec.id]
        await b.node.queue.enqueue(notice(b, "b gave it up"))
        with pytest.raises(SessionElsewhereError):
            await a.node.queue.enqueue(notice(a, "a's late reply"))
        assert a.lost == [rec.id]
        assert a.node.sessions.epoch_of(rec.id) is None
        with pytest.raises(SessionElsewhereError):  # and stays refused
            await a.node.queue.enqueue(notice(a, "a's late reply, again"))
    finally:
        TURN_SESSION.reset(mine)
    await a.node.queue.enqueue(notice(a, "no session"))  # a manual delivery: not fenced
    assert sorted(queued(pg_dsn)) == ["a owns it", "b gave it up", "no session"]
    assert b.lost == []


async def test_taking_over_a_session_held_here_in_the_same_ownership_reads_nothing_back(
    members: Callable[[str], Awaitable[Member]],
) -> None:
    """The copy in memory is newer than the row (a turn ended here may not be written yet):
    read back, it would replace that copy and end that turn a second time (soak seed 6)."""
    a = await members("a")
    rec = record()
    await a.node.sessions.save(rec)
    located = await a.node.sessions.locate("main", rec.origin, rec.id, "s-ab12cd34-1-9")
    assert (located.session_id, located.owner, located.record) == (rec.id, None, None)
    assert a.lost == []
