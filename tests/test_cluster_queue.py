"""Cluster mode's shared delivery queue (SPEC 12) against the real PostgreSQL the suite starts:
claims, fencing, takeover, and the worker on trio's MockClock through the inline runner."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import psycopg
import pytest
import trio
from helpers import age_heartbeat

from trio_gateway.channels.base import OK, Outcome
from trio_gateway.cluster import pg_queue, schema
from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode, cluster_status
from trio_gateway.cluster.pg_delivery import PgDeliveryWorker
from trio_gateway.cluster.pg_queue import PgDeliveryQueue
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.errors import ClusterDatabaseError, NotFoundError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.config import AgentConfig, ClusterConfig, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import Claimed
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=1)  # entries are created at T0 + a little real time: due by now
AGENTS = {"main": AgentConfig()}
ME = Origin("console", "me")
CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5)


@attrs.define
class Node:
    db: Database
    node: ClusterNode
    outbox: Outbox
    sink: MemorySink

    @property
    def queue(self) -> PgDeliveryQueue:
        return self.node.queue

    def lines(self, needle: str) -> list[str]:
        return [e.text() for e in self.sink.events if needle in e.text()]


@attrs.define
class Recorder:
    """A channel: records each send, answers with `script`, optionally after `delay`."""

    script: Callable[[DeliveryEntry], Outcome] = lambda _e: OK
    delay: float = 0.0
    deduplicates: bool = False
    sends: list[tuple[str, str]] = attrs.Factory(list)  # (node, entry id)
    node: str = ""

    async def send(self, entry: DeliveryEntry) -> Outcome:
        self.sends.append((self.node, entry.id))
        await trio.sleep(self.delay)
        return self.script(entry)

    def get(self, channel: str, account_id: str | None) -> Recorder:
        return self

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def cluster(pg_dsn: str) -> AsyncIterator[Callable[[str], trio.lowlevel.Task | Node]]:
    made: list[Database] = []
    clock = WallClock.start(T0)

    async def make(node_id: str) -> Node:
        db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=4)
        made.append(db)
        sink = MemorySink()
        log = EventLog([sink])
        node = ClusterNode.create(db, attrs.evolve(CLUSTER, node_id=node_id), log, clock.now, lease_seconds=60)
        await node.start()
        return Node(db, node, Outbox(node.queue, AGENTS, clock, log), sink)

    yield make  # type: ignore[misc]
    for db in made:
        db.pool.close()


async def add(node: Node, n: int, key: str | None = None, *, spread: bool = False) -> list[DeliveryEntry]:
    """`n` replies to ME, or with `spread` each to its own recipient (parallel: SPEC 15 sends one
    conversation one entry at a time)."""
    return [
        await node.outbox.submit(
            kind="reply",
            origin=Origin("console", f"me-{i}") if spread else ME,
            agent_id="main",
            text=f"t{i}",
            idempotency_key=key,
        )
        for i in range(n)
    ]


async def wait_drained(queue: PgDeliveryQueue) -> None:
    """Until nothing is pending or dead (virtual time: polling is free)."""
    for _ in range(100_000):
        if await queue.counts() == {"pending": 0, "failed": 0}:
            return
        await trio.sleep(0.1)
    raise AssertionError("the queue never drained")


def claimed(result: object) -> Claimed:
    assert isinstance(result, Claimed)
    return result


# --- the test database itself -----------------------------------------------------------------


def test_each_test_gets_its_own_empty_database(pg_server: object, pg_dsn: str) -> None:
    other = pg_server.create_database()  # type: ignore[attr-defined]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE mine (x int)")
    with psycopg.connect(other) as conn:
        assert conn.execute("SELECT to_regclass('mine')").fetchone() == (None,)


async def test_schema_is_created_once_and_a_newer_one_is_refused(cluster: Callable[..., object], pg_dsn: str) -> None:
    a = await cluster("a")  # type: ignore[misc]
    await cluster("b")  # type: ignore[misc]  # the second node finds it migrated
    with psycopg.connect(pg_dsn) as conn:
        versions = conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v, _ in schema.MIGRATIONS]  # each applied once
        conn.execute("INSERT INTO schema_version VALUES (%s, now())", (schema.LATEST + 1,))
    with pytest.raises(ClusterDatabaseError, match="newer than this gateway"):
        await a.db.run(schema.migrate)


# --- the queue --------------------------------------------------------------------------------


async def test_an_idempotency_key_is_enqueued_once(cluster: Callable[..., object]) -> None:
    a = await cluster("a")  # type: ignore[misc]
    await add(a, 1, key="turn-s-1-1-1")
    await add(a, 1, key="turn-s-1-1-1")  # a resumed turn's reply, enqueued again
    assert len(await a.queue.list_pending()) == 1
    assert a.lines("exists already")


async def test_two_nodes_claim_disjoint_batches(cluster: Callable[..., object]) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    await add(a, 10, spread=True)
    now = T0 + dt.timedelta(seconds=1)
    first, second = await a.queue.claim_due(now, 6), await b.queue.claim_due(now, 6)
    assert len(first) == 6
    assert len(second) == 4
    assert not {c.entry.id for c in first} & {c.entry.id for c in second}
    assert all(c.entry.send_started_at == now for c in first)  # marked in the claim itself
    assert await a.queue.claim_due(now, 6) == []
    assert len(await a.queue.list_inflight()) == 10


async def test_a_node_that_lost_its_claim_changes_nothing(cluster: Callable[..., object]) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    [entry] = await add(a, 1)
    [old] = await a.queue.claim_due(T1, 1)
    # Node a falls silent: b judges it dead and takes the claim over.
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 1)  # on the database's clock
    await b.node.heartbeat()
    assert await b.queue.recover() == [entry.id]
    assert b.lines("Took over 1 delivery claim(s) of node a")
    [new] = await b.queue.claim_due(T0 + dt.timedelta(seconds=7), 1)
    assert new.fence == old.fence + 1
    assert new.resend_of == T1  # a's send may have happened: possible duplicate
    # a wakes up: its ack, retry and dead letter are fenced out.
    await a.queue.ack(old)
    await a.queue.retry_later(old, "late", T0)
    await a.queue.dead_letter(old, "late", T0)
    assert len(a.lines("claim lost")) == 3
    assert [e.id for e in await a.queue.list_inflight()] == [entry.id]
    assert await a.queue.list_failed() == []
    await b.queue.ack(new)
    assert await b.queue.list_inflight() == []
    assert await b.queue.list_pending() == []


async def expire_leases(member: Node) -> None:
    """Every claim's lease ran out, on the database's clock (60 s after the claim there)."""
    await member.db.run(lambda conn: conn.execute("UPDATE deliveries SET lease_until = now() - interval '1 second'"))


async def test_a_lone_node_takes_back_its_own_claim_once_the_lease_ran_out(cluster: Callable[..., object]) -> None:
    # A claim this node holds but no attempt here finishes (the claim committed after the call
    # was given up, or its settle failed): with no live peer, only its own sweep can free it.
    a = await cluster("a")  # type: ignore[misc]
    [entry] = await add(a, 1)
    [lost] = await a.queue.claim_due(T1, 1)
    assert await a.queue.recover() == []  # within its lease the claim may still be live
    await expire_leases(a)
    assert await a.queue.recover() == [entry.id]
    assert a.lines("Took back 1 delivery claim(s) of this node whose lease ran out")
    [again] = await a.queue.claim_due(T1 + dt.timedelta(seconds=61), 1)
    assert (again.fence, again.resend_of) == (lost.fence + 1, T1)  # logged as a possible duplicate
    await a.queue.ack(lost)  # the lost attempt, finishing late, changes nothing
    assert [e.id for e in await a.queue.list_inflight()] == [entry.id]
    await a.queue.ack(again)
    assert await a.queue.counts() == {"pending": 0, "failed": 0}


async def test_release_keeps_the_send_mark_and_retry_dead_resets(cluster: Callable[..., object]) -> None:
    a = await cluster("a")  # type: ignore[misc]
    [entry] = await add(a, 1)
    first = claimed(await a.queue.claim_to_send(entry.id, T1))
    await a.queue.release(first)
    [pending] = await a.queue.list_pending()
    assert pending.send_started_at == T1
    again = claimed(await a.queue.claim_to_send(entry.id, T1 + dt.timedelta(seconds=1)))
    assert again.resend_of == T1
    await a.queue.dead_letter(again, "HTTP 400", T0)
    [dead] = await a.queue.list_failed()
    assert dead.failed_reason == "HTTP 400"
    back = await a.queue.retry_dead(entry.id, T0)
    assert (back.attempts, back.failed_reason) == (0, None)
    with pytest.raises(NotFoundError):
        await a.queue.retry_dead(entry.id, T0)


async def test_leaving_releases_claims_and_status_shows_nodes(cluster: Callable[..., object]) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    await add(a, 3, spread=True)
    # Due by then however long the three writes took on a busy machine (the clock is real time).
    assert len(await a.queue.claim_due(T0 + dt.timedelta(seconds=30), 2)) == 2
    nodes = {n["nodeId"]: n for n in await cluster_status(b.db, CLUSTER.dead_after_seconds)}
    assert (nodes["a"]["state"], nodes["a"]["claimsHeld"], nodes["b"]["claimsHeld"]) == ("running", 2, 0)
    a.node.db.pool.close = lambda **_kw: None  # type: ignore[method-assign]  # the fixture closes it
    await a.node.leave()
    nodes = {n["nodeId"]: n for n in await cluster_status(b.db, CLUSTER.dead_after_seconds)}
    assert (nodes["a"]["state"], nodes["a"]["claimsHeld"]) == ("stopped", 0)
    assert len(await b.queue.list_pending()) == 3
    await age_heartbeat(b.node, 60)  # b falls silent: dead, on the database's clock
    assert {n["state"] for n in await cluster_status(b.db, CLUSTER.dead_after_seconds)} == {"dead", "stopped"}


# --- every call has a deadline ----------------------------------------------------------------


async def test_a_statement_past_its_timeout_is_a_clear_error(pg_dsn: str) -> None:
    db = Database.create(pg_dsn, statement_timeout=0.2, inline=True, max_size=1)
    await db.open()
    try:
        with pytest.raises(ClusterDatabaseError, match="statement_timeout"):
            await db.run(lambda conn: conn.execute("SELECT pg_sleep(5)"))
        assert await db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    finally:
        db.pool.close()


async def test_cancelling_a_call_cancels_the_query_on_the_server(pg_dsn: str) -> None:
    # Real threads and the real clock (not the MockClock): what production does.
    db = Database.create(pg_dsn, statement_timeout=30, max_size=1)
    await db.open()
    try:
        with trio.move_on_after(0.2) as scope:
            await db.run(lambda conn: conn.execute("SELECT pg_sleep(20)"))
        assert scope.cancelled_caught
        # The one pooled connection is free again (the query was cancelled, not abandoned)...
        assert await db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
        # ...and the server runs no pg_sleep any more.
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(20)%'")
            assert rows.fetchone() == (0,)
    finally:
        await db.close()


# --- the worker on the MockClock --------------------------------------------------------------


def worker_for(node: Node, channel: Recorder, **config: float) -> PgDeliveryWorker:
    log = node.node.log
    cfg = DeliveryConfig(**config)  # type: ignore[arg-type]
    clock = WallClock.start(T0)
    return PgDeliveryWorker(
        node.queue, channel, cfg, clock, log, WorkRegistry(log), random.Random(1), pg=node.queue, poll_seconds=0.2
    )


async def test_two_workers_deliver_every_entry_once(cluster: Callable[..., object], autojump_clock: object) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    ch_a, ch_b = Recorder(delay=0.05, node="a"), Recorder(delay=0.05, node="b")
    entries = await add(a, 60, spread=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker_for(a, ch_a, concurrency=4).run)
        await nursery.start(worker_for(b, ch_b, concurrency=4).run)
        await wait_drained(a.queue)
        nursery.cancel_scope.cancel()
    sent = [i for _, i in ch_a.sends + ch_b.sends]
    assert sorted(sent) == sorted(e.id for e in entries)  # each once
    assert ch_a.sends
    assert ch_b.sends


async def test_retries_go_back_to_the_shared_queue(cluster: Callable[..., object], autojump_clock: object) -> None:
    a = await cluster("a")  # type: ignore[misc]
    failures = iter([Outcome("retry", "HTTP 503"), Outcome("retry", "HTTP 503")])
    channel = Recorder(script=lambda _e: next(failures, OK))
    [entry] = await add(a, 1)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker_for(a, channel, initial_backoff_seconds=1, max_backoff_seconds=4).run)
        await wait_drained(a.queue)
        nursery.cancel_scope.cancel()
    assert [i for _, i in channel.sends] == [entry.id] * 3
    assert len(a.lines("Retry")) == 2


async def test_dead_letters_are_read_a_page_at_a_time(cluster: Callable[..., object]) -> None:
    """Issue 25: `GET /v1/deliveries` reads only the page it answers, from PostgreSQL too."""
    from trio_gateway.errors import BadRequestError

    a = await cluster("a")  # type: ignore[misc]
    entries = await add(a, 5)
    for entry in entries:
        await a.queue.dead_letter(claimed(await a.queue.claim_to_send(entry.id, T1)), "HTTP 400", T1)
    ids = sorted(e.id for e in entries)
    first, total = await a.queue.failed_page(None, 2)
    assert ([e.id for e in first], total) == (ids[:2], 5)
    assert [e.id for e in (await a.queue.failed_page(ids[1], 2))[0]] == ids[2:4]
    assert [e.id for e in (await a.queue.failed_page(ids[3], 10))[0]] == ids[4:]
    with pytest.raises(BadRequestError, match="is not a delivery id"):
        await a.queue.retry_dead("../../x", T1)


# --- the order of a conversation (SPEC 15) ---------------------------------------------------


async def test_only_the_head_of_a_conversation_is_claimed(cluster: Callable[..., object]) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    chat = await add(a, 3)  # one recipient
    others = await add(a, 2, spread=True)
    [head, *rest] = chat
    first = await a.queue.claim_due(T1, 10)
    assert {c.entry.id for c in first} == {head.id, *(e.id for e in others)}
    assert await b.queue.claim_due(T1, 10) == []  # another node sees the head in flight
    [held] = [c for c in first if c.entry.id == head.id]
    # A retry of the head: pending again, waiting, and holding the rest of its conversation.
    await a.queue.retry_later(held, "HTTP 503", T1 + dt.timedelta(seconds=30))
    assert await b.queue.claim_due(T1 + dt.timedelta(seconds=29), 10) == []
    [again] = await b.queue.claim_due(T1 + dt.timedelta(seconds=30), 10)
    assert again.entry.id == head.id
    await b.queue.dead_letter(again, "gave up", T1)  # dead-lettered: the next one may go
    [second] = await a.queue.claim_due(T1, 10)
    assert second.entry.id == rest[0].id
    # `delivery retry` revives the older dead letter while `second` is in flight: it waits.
    await a.queue.retry_dead(head.id, T1)
    assert await b.queue.claim_due(T1, 10) == []
    await a.queue.ack(second)
    [revived] = await b.queue.claim_due(T1, 10)
    assert revived.entry.id == head.id  # the oldest goes first again
    await b.queue.ack(revived)
    [third] = await b.queue.claim_due(T1, 10)
    assert third.entry.id == rest[1].id


@attrs.define
class OrderRecorder(Recorder):
    """Also checks, at every send, that nothing else of the same recipient is in flight."""

    in_flight: set[str] = attrs.Factory(set)
    by_to: dict[str, list[str]] = attrs.Factory(dict)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        assert entry.to not in self.in_flight, f"two sends in flight for {entry.to}"
        self.in_flight.add(entry.to)
        self.by_to.setdefault(entry.to, []).append(entry.id)
        try:
            return await super().send(entry)
        finally:
            self.in_flight.discard(entry.to)


async def test_two_nodes_keep_each_conversation_in_order(
    cluster: Callable[..., object], autojump_clock: object
) -> None:
    a, b = await cluster("a"), await cluster("b")  # type: ignore[misc]
    shared = OrderRecorder(delay=0.05)  # both nodes' sends, to see them together
    entries = []
    for _ in range(6):  # six rounds of one reply to each of five recipients
        entries += await add(a, 5, spread=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker_for(a, shared, concurrency=4).run)
        await nursery.start(worker_for(b, shared, concurrency=4).run)
        await wait_drained(a.queue)
        nursery.cancel_scope.cancel()
    for to, sent in shared.by_to.items():
        assert sent == sorted(e.id for e in entries if e.to == to), to
    assert sum(len(v) for v in shared.by_to.values()) == 30


# --- fencing on every settle ----------------------------------------------------------------------

Settle = Callable[[PgDeliveryQueue, Claimed], Awaitable[object]]
SETTLES: dict[str, Settle] = {
    "retry": lambda q, c: q.retry_later(c, "HTTP 503", T0),
    "hold": lambda q, c: q.hold(c, "account paused", T0),
    "release": lambda q, c: q.release(c),
    "dead letter": lambda q, c: q.dead_letter(c, "HTTP 400", T0),
    "reroute": lambda q, c: q.reroute(c, channel="console", to="ops", account_id=None, now=T0, why="unroutable"),
}


@pytest.mark.parametrize("settle", SETTLES.values(), ids=list(SETTLES))
async def test_a_stale_settle_after_a_lone_node_took_back_its_claim_changes_nothing(
    cluster: Callable[..., object], settle: Settle
) -> None:
    # Same node, so only the fence tells the two claims apart: the attempt that lost its claim
    # (lease ran out, taken back by this node's own sweep) finishes late, after the new claim.
    a = await cluster("a")  # type: ignore[misc]
    [entry] = await add(a, 1)
    [lost] = await a.queue.claim_due(T1, 1)
    later = T1 + dt.timedelta(seconds=61)
    await expire_leases(a)
    assert await a.queue.recover() == [entry.id]
    [again] = await a.queue.claim_due(later, 1)
    await settle(a.queue, lost)
    assert len(a.lines("claim lost")) == 1
    [held] = await a.queue.list_inflight()  # still the new claim's, untouched
    assert (held.channel, held.to, held.attempts, held.last_error, held.failed_reason) == (
        entry.channel,
        entry.to,
        0,
        None,
        None,
    )
    assert (await a.queue.list_pending(), await a.queue.list_failed()) == ([], [])
    await a.queue.ack(again)  # the holder's own settle still lands
    assert await a.queue.counts() == {"pending": 0, "failed": 0}


async def test_a_conversation_another_claimer_is_claiming_is_skipped_this_round(
    cluster: Callable[..., object], pg_dsn: str
) -> None:
    """The claim's per-conversation transaction lock (the READ COMMITTED race: two claimers each
    seeing a different head of one conversation free): while another claimer holds a
    conversation's lock, this claim leaves that conversation alone, without waiting."""
    a = await cluster("a")  # type: ignore[misc]
    first, second = await add(a, 2, spread=True)
    key = f"console\x1f\x1f{first.to}"
    with psycopg.connect(pg_dsn) as other:  # another node, mid-claim (its transaction open)
        other.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (pg_queue._CLAIM_LOCK_CLASS, key))
        claims = await a.queue.claim_due(T1 + dt.timedelta(seconds=30), 10)
        assert [c.entry.id for c in claims] == [second.id]
        other.rollback()
    [later] = await a.queue.claim_due(T1 + dt.timedelta(seconds=30), 10)
    assert later.entry.id == first.id


@attrs.define
class DatabaseAway:
    """The queue while PostgreSQL restarts: the first `times` enqueues fail."""

    queue: PgDeliveryQueue
    times: int = 2

    def new_id(self, when: dt.datetime) -> str:
        return self.queue.new_id(when)

    async def enqueue(self, entry: DeliveryEntry) -> None:
        if self.times:
            self.times -= 1
            raise ClusterDatabaseError("cluster database unavailable: server closed the connection unexpectedly")
        await self.queue.enqueue(entry)


async def test_a_reply_enqueued_while_the_database_restarts_waits_for_it(
    cluster: Callable[..., object], autojump_clock: object
) -> None:
    """A turn's reply is accepted work: with the database away (a restart) the outbox retries
    it as it retries a full disk, instead of leaving the turn with its reply until the next
    generation, which in cluster mode nobody starts (the chaos soak found one such turn)."""
    a = await cluster("a")  # type: ignore[misc]
    away = DatabaseAway(a.queue)
    outbox = Outbox(away, AGENTS, WallClock.start(T0), EventLog([a.sink]))  # type: ignore[arg-type]
    await outbox.submit(kind="reply", origin=ME, agent_id="main", text="kept", idempotency_key="turn-x-1")
    [entry] = await a.queue.list_pending()
    assert (entry.payload.text, away.times) == ("kept", 0)
    assert a.lines("not enqueued yet; retrying until the queue takes it")
    assert outbox.storage.full == {}  # recovered
