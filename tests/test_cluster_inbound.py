"""SPEC 12: an inbound account is listened to by one node at a time (the lease
`inbound:<channel>:<account>`) and its cursor lives in the database, against a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio

from trio_gateway.channels import telegram
from trio_gateway.channels.inbound import Intake
from trio_gateway.channels.listen import AccountListener, ListenerSupervisor
from trio_gateway.cluster.db import Database
from trio_gateway.cluster.inbound import InboundLeases, PgCursors
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.log import EventLog
from trio_gateway.policy.config import ClusterConfig
from trio_gateway.policy.origin import Origin

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5)
KEY = "inbound:telegram:bot-1"


@attrs.define
class FakeListener:
    channel: str = "telegram"
    account_id: str = "bot-1"
    listening: bool = False
    listens: int = 0
    stops: int = 0
    cursors_found: list[Any] = attrs.Factory(list)

    async def listen(self, intake: Intake) -> None:
        self.listens += 1
        found = await intake.load_cursor()
        self.cursors_found.append(found)
        await intake.save_cursor((found or 0) + 1)
        self.listening = True
        try:
            await trio.sleep_forever()
        finally:
            self.listening = False

    async def stop(self) -> None:
        self.stops += 1

    async def aclose(self) -> None:
        pass


async def never(*, agent_id: str, origin: Origin, prompt: str, inbound_id: str) -> tuple[str, str] | None:
    raise AssertionError("no message is heard in this test")


@pytest.fixture
async def nodes(pg_dsn: str) -> AsyncIterator[Callable[[str], Awaitable[ClusterNode]]]:
    made: list[Database] = []

    async def make(node_id: str) -> ClusterNode:
        db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=2)
        made.append(db)
        node = ClusterNode.create(
            db, attrs.evolve(CLUSTER, node_id=node_id), EventLog([]), lambda: T0, lease_seconds=60
        )
        await node.start()
        return node

    yield make
    for db in made:
        db.pool.close()


def supervisor(node: ClusterNode, listener: FakeListener) -> ListenerSupervisor:
    log = EventLog([])
    account = AccountListener("telegram", "bot-1", "poll", "main", listener, telegram.ADDRESS)
    gate = InboundLeases(node.leases, log, renew_seconds=1, ttl_seconds=5)
    return ListenerSupervisor([account], never, PgCursors(node.db, node.node_id, log), log, 5.0, gate=gate)


async def wait_until(check: Callable[[], Any]) -> None:
    # The states polled are plain attributes of the supervisor; virtual time, so polling is free.
    while not check():  # noqa: ASYNC110
        await trio.sleep(0.1)


async def test_one_node_listens_a_lost_lease_stops_it_and_a_drain_gives_the_key_up(
    nodes: Callable[[str], Awaitable[ClusterNode]], autojump_clock: trio.testing.MockClock
) -> None:
    a, b = await nodes("a"), await nodes("b")
    heard_a, heard_b = FakeListener(), FakeListener()
    sup_a, sup_b = supervisor(a, heard_a), supervisor(b, heard_b)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup_a.run)
        await wait_until(lambda: heard_a.listening)
        await nursery.start(sup_b.run)
        await trio.sleep(10)  # b retries every second and never gets the key while a lives
        assert (heard_b.listens, sup_b.accounts[0].state) == (0, "off")
        holder = await a.leases.holder(KEY)
        assert holder is not None
        assert holder.node_id == "a"

        # Node a is judged dead: b takes the key over; a's next renewal fails and it stops.
        await a.db.run(lambda conn: conn.execute("UPDATE nodes SET state = 'stopped' WHERE node_id = 'a'"))
        await wait_until(lambda: heard_b.listening and not heard_a.listening)
        assert heard_a.stops == 1
        assert sup_a.accounts[0].state == "off"
        holder = await b.leases.holder(KEY)
        assert holder is not None
        assert (holder.node_id, holder.epoch) == ("b", 2)
        await trio.sleep(10)
        assert heard_a.listens == 1  # b is alive: a never listens again meanwhile
        # b went on from a's cursor (in the database), and a, without the lease, cannot move it.
        assert (heard_a.cursors_found, heard_b.cursors_found) == ([None], [1])
        await PgCursors(a.db, "a", EventLog([])).save("telegram", "bot-1", 99)
        assert await PgCursors(b.db, "b", EventLog([])).load("telegram", "bot-1") == 2

        # A drain on b releases the key at once: a peer need not wait for the lease to run out.
        sup_b.stop()
        await wait_until(lambda: sup_b.accounts[0].state == "off" and not heard_b.listening)
        assert await b.leases.holder(KEY) is None
        assert heard_b.stops == 1
        sup_a.stop()
    # a was standing by when it stopped: no second stop call that could end the holder's connection.
    assert heard_a.stops == 1
