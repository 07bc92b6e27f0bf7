"""LISTEN/NOTIFY wake-ups between nodes (SPEC 12, issue 23): against the real PostgreSQL the
suite starts, on trio's real clock (the listener waits in threads). Every poll here is set to an
hour, so anything that happens within the tests' bounds was woken by a notification; the bounds
themselves are generous (a loaded machine) and never a figure under test."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import psycopg
import pytest
import trio

from trio_gateway.channels.base import OK, Outcome
from trio_gateway.cluster.db import Database
from trio_gateway.cluster.inbound import InboundLeases
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.cluster.notify import DELIVERY, RELEASED, Notifier, notify
from trio_gateway.cluster.pg_delivery import PgDeliveryWorker
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.config import AgentConfig, ClusterConfig, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.sessions import SessionRecord, TurnRecord
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

pytestmark = pytest.mark.postgres

HOUR = 3600.0
BOUND = 30.0  # only fails a broken test
T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5, poll_seconds=HOUR)


@attrs.define
class Member:
    node: ClusterNode
    sink: MemorySink

    @property
    def notifier(self) -> Notifier:
        assert self.node.notifier is not None
        return self.node.notifier

    def lines(self, needle: str) -> list[str]:
        return [e.text() for e in self.sink.events if needle in e.text()]


@pytest.fixture
async def members(pg_dsn: str) -> AsyncIterator[Callable[[str], Awaitable[Member]]]:
    made: list[Database] = []
    clock = WallClock.start(T0)

    async def make(node_id: str) -> Member:
        db = Database.create(pg_dsn, statement_timeout=5, max_size=4)  # threads: a real listener
        made.append(db)
        sink = MemorySink()
        node = ClusterNode.create(
            db, attrs.evolve(CLUSTER, node_id=node_id), EventLog([sink]), clock.now, lease_seconds=60
        )
        await node.start()
        assert node.notifier is not None
        node.notifier.probe_seconds = 0.5  # probed often: a silent connection is found quickly
        node.notifier.probe_bound_seconds = 0.5
        return Member(node, sink)

    yield make
    for db in made:
        db.pool.close()


@attrs.define
class Recorder:
    sends: list[str] = attrs.Factory(list)
    sent: trio.Event = attrs.Factory(trio.Event)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        self.sends.append(entry.id)
        self.sent.set()
        await trio.lowlevel.checkpoint()
        return OK

    def get(self, channel: str, account_id: str | None) -> Recorder:
        return self

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_notification_arrives_on_commit_only(members: Callable[[str], Awaitable[Member]], pg_dsn: str) -> None:
    b = await members("b")
    async with trio.open_nursery() as nursery:
        with b.notifier.subscribe(DELIVERY) as wakes:
            await nursery.start(b.notifier.run)
            with trio.fail_after(BOUND):
                assert await wakes.get() is None  # connected: "look at everything"
            with psycopg.connect(pg_dsn) as conn:
                notify(conn, DELIVERY, "rolled back")
                conn.rollback()
                notify(conn, DELIVERY, "committed")
                conn.commit()
            with trio.fail_after(BOUND):
                assert await wakes.get() == "committed"  # the rolled-back one never came
        nursery.cancel_scope.cancel(reason="test over")


async def test_a_delivery_enqueued_on_one_node_is_claimed_on_another_without_waiting_for_a_poll(
    members: Callable[[str], Awaitable[Member]],
) -> None:
    a, b = await members("a"), await members("b")
    clock = WallClock.start(T0)
    channel = Recorder()
    log = b.node.log
    worker = PgDeliveryWorker(
        b.node.queue,
        channel,
        DeliveryConfig(),
        clock,
        log,
        WorkRegistry(log),
        random.Random(1),
        pg=b.node.queue,
        poll_seconds=HOUR,
    )
    unsubscribe = b.node.on_peers(DELIVERY, worker.wake)
    outbox = Outbox(a.node.queue, {"main": AgentConfig()}, clock, a.node.log)
    async with trio.open_nursery() as nursery:
        await nursery.start(b.notifier.run)
        await nursery.start(worker.run)
        await trio.sleep(1)  # b's worker has looked once (nothing) and waits its hour-long poll
        entry = await outbox.submit(kind="reply", origin=Origin("console", "me"), agent_id="main", text="hi")
        with trio.fail_after(BOUND):
            await channel.sent.wait()
        nursery.cancel_scope.cancel(reason="test over")
    unsubscribe()
    assert channel.sends == [entry.id]


async def test_a_killed_listener_is_reestablished_and_wakes_again(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    b = await members("b")
    async with trio.open_nursery() as nursery:
        with b.notifier.subscribe(DELIVERY) as wakes:
            await nursery.start(b.notifier.run)
            with trio.fail_after(BOUND):
                assert await wakes.get() is None  # connected: "look at everything"
            pid = b.notifier.backend_pid
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                assert conn.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            with trio.fail_after(BOUND):
                # Reconnected: every subscriber is told to look (a notification sent while the
                # listener was away is lost), then notifications flow on the new connection.
                assert await wakes.get() is None
            assert b.notifier.reconnects == 1
            assert b.notifier.backend_pid not in (None, pid)
            with psycopg.connect(pg_dsn, autocommit=True) as conn:
                notify(conn, DELIVERY, "after")
            with trio.fail_after(BOUND):
                assert await wakes.get() == "after"
        nursery.cancel_scope.cancel(reason="test over")
    assert b.lines("Notification connection lost; reconnecting")
    assert b.lines("Notification connection re-established")


async def test_a_silent_listener_is_probed_and_replaced(
    members: Callable[[str], Awaitable[Member]], pg_dsn: str
) -> None:
    """A listener whose server stopped answering (its backend SIGSTOPped: the socket stays open
    and says nothing) is found by the probe, and a new connection takes over."""
    b = await members("b")
    async with trio.open_nursery() as nursery:
        with b.notifier.subscribe(DELIVERY) as wakes:
            await nursery.start(b.notifier.run)
            with trio.fail_after(BOUND):
                assert await wakes.get() is None  # connected: "look at everything"
            pid = b.notifier.backend_pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)
            try:
                with trio.fail_after(BOUND):
                    assert await wakes.get() is None
                assert b.notifier.backend_pid != pid
                with psycopg.connect(pg_dsn, autocommit=True) as conn:
                    notify(conn, DELIVERY, "after")
                with trio.fail_after(BOUND):
                    assert await wakes.get() == "after"
            finally:
                os.kill(pid, signal.SIGCONT)
        nursery.cancel_scope.cancel(reason="test over")
    assert b.lines("no answer to a probe")


async def test_a_released_session_is_adopted_at_once(members: Callable[[str], Awaitable[Member]]) -> None:
    a, b = await members("a"), await members("b")
    origin = Origin("console", "me")
    record = SessionRecord("s-ab12cd34-1-1", "main", origin, T0)
    record.turns = [TurnRecord("turn-s-1-1", "hello", origin)]
    await a.node.sessions.save(record)
    adopted: list[str] = []
    got = trio.Event()

    async def adopt(records: list[SessionRecord]) -> None:
        await trio.lowlevel.checkpoint()
        adopted.extend(r.id for r in records)
        got.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(b.notifier.run)
        nursery.start_soon(b.node.sweep, adopt)
        await trio.sleep(1)  # b swept once (a holds the session) and waits its hour-long poll
        assert adopted == []
        await a.node.leases.release_all()  # a drained: its NOTIFY wakes b's sweep
        with trio.fail_after(BOUND):
            await got.wait()
        nursery.cancel_scope.cancel(reason="test over")
    assert adopted == [record.id]


async def test_a_listener_standing_by_takes_a_released_account_at_once(
    members: Callable[[str], Awaitable[Member]],
) -> None:
    a, b = await members("a"), await members("b")
    gates = [InboundLeases(m.node.leases, m.node.log, renew_seconds=HOUR, ttl_seconds=HOUR) for m in (a, b)]
    gates[1].on_released = lambda wake: b.node.on_peers(RELEASED, wake)
    key = gates[0].key("telegram", "bot-1")
    held = await gates[0].take(key)
    assert held is not None
    assert await gates[1].take(key) is None
    async with trio.open_nursery() as nursery:
        await nursery.start(b.notifier.run)

        async def release_soon() -> None:
            await trio.sleep(1)  # b stands by first
            await gates[0].give_up(held)  # a's drain

        nursery.start_soon(release_soon)
        with trio.fail_after(BOUND):
            await gates[1].standby()  # an hour, unless a release wakes it
        assert await gates[1].take(key) is not None
        nursery.cancel_scope.cancel(reason="test over")
