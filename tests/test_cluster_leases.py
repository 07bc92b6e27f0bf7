"""The per-key lease with an epoch (cluster mode): one holder at a time, takeover by heartbeat,
fenced renew and release."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest
from helpers import age_heartbeat

from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.log import EventLog
from trio_gateway.policy.config import ClusterConfig

pytestmark = pytest.mark.postgres

T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5)
KEY = "inbound:telegram:bot-1"


@attrs.define
class Clock:
    at: dt.datetime = T0

    def now(self) -> dt.datetime:
        return self.at


@pytest.fixture
async def nodes(pg_dsn: str) -> AsyncIterator[Callable[[str, Clock], Awaitable[ClusterNode]]]:
    made: list[Database] = []

    async def make(node_id: str, clock: Clock) -> ClusterNode:
        db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=2)
        made.append(db)
        node = ClusterNode.create(db, attrs.evolve(CLUSTER, node_id=node_id), EventLog([]), clock.now, lease_seconds=60)
        await node.start()
        return node

    yield make
    for db in made:
        db.pool.close()


async def test_one_holder_at_a_time_and_the_epoch_moves_only_with_the_holder(
    nodes: Callable[[str, Clock], Awaitable[ClusterNode]],
) -> None:
    clock = Clock()
    a, b = await nodes("a", clock), await nodes("b", clock)
    lease = await a.leases.acquire(KEY, ttl=30)
    assert lease is not None
    assert (lease.node_id, lease.epoch) == ("a", 1)
    assert await b.leases.acquire(KEY, ttl=30) is None  # a is alive and holds it
    again = await a.leases.acquire(KEY, ttl=30)
    assert again is not None
    assert again.epoch == 1  # a renewal, not a new holder
    assert await a.leases.release(again)
    taken = await b.leases.acquire(KEY, ttl=30)
    assert taken is not None
    assert (taken.node_id, taken.epoch) == ("b", 2)
    # a's old lease is fenced out everywhere.
    assert not await a.leases.still_held(again)
    assert await a.leases.renew(again, ttl=30) is None
    assert not await a.leases.release(again)
    assert await b.leases.holder(KEY) == taken


async def test_a_dead_nodes_lease_is_taken_over_before_it_expires(
    nodes: Callable[[str, Clock], Awaitable[ClusterNode]],
) -> None:
    a_clock, b_clock = Clock(), Clock()
    a, b = await nodes("a", a_clock), await nodes("b", b_clock)
    assert await a.leases.acquire(KEY, ttl=600) is not None
    # a stops heartbeating; b's heartbeats go on past deadAfterSeconds, long before the expiry.
    # (Judged on the database's clock: a's last heartbeat is made that old there.)
    assert await b.leases.acquire(KEY, ttl=30) is None
    await age_heartbeat(a, CLUSTER.dead_after_seconds + 1)
    await b.heartbeat()
    taken = await b.leases.acquire(KEY, ttl=30)
    assert taken is not None
    assert (taken.node_id, taken.epoch) == ("b", 2)


async def test_nodes_clocks_skewed_30_s_either_way_change_no_verdict(
    nodes: Callable[[str, Clock], Awaitable[ClusterNode]],
) -> None:
    """SPEC 12: leases, heartbeats and death on the database's clock. b's clock runs 30 s
    ahead and c's 30 s behind: a live holder is never taken for dead (on b's clock a's last
    heartbeat would be 30 s old, past deadAfterSeconds), and a dead one is taken over on time
    (on c's clock it would still look fresh)."""
    real = dt.datetime.now(dt.UTC)
    a = await nodes("a", Clock(real))
    b = await nodes("b", Clock(real + dt.timedelta(seconds=30)))
    c = await nodes("c", Clock(real - dt.timedelta(seconds=30)))
    for node in (a, b, c):
        await node.heartbeat()
    lease = await a.leases.acquire(KEY, ttl=CLUSTER.dead_after_seconds)
    assert lease is not None
    assert await b.leases.acquire(KEY, ttl=30) is None  # a is alive, whatever b's clock says
    ages = {n["nodeId"]: n["heartbeatAgeSeconds"] for n in (await c.status())["nodes"]}
    assert all(0 <= age < 5 for age in ages.values()), ages  # no node looks 30 s old or young
    await age_heartbeat(a, CLUSTER.dead_after_seconds + 0.5)
    taken = await c.leases.acquire(KEY, ttl=30)  # dead on the database's clock: c takes it
    assert taken is not None
    assert (taken.node_id, taken.epoch) == ("c", 2)


async def test_leaving_releases_every_lease(nodes: Callable[[str, Clock], Awaitable[ClusterNode]]) -> None:
    clock = Clock()
    a, b = await nodes("a", clock), await nodes("b", clock)
    assert await a.leases.acquire("session:s-1", ttl=600) is not None
    a.db.pool.close = lambda **_kw: None  # type: ignore[method-assign]  # the fixture closes it
    await a.leave()
    taken = await b.leases.acquire("session:s-1", ttl=30)  # at once: a said it left
    assert taken is not None
    assert taken.node_id == "b"
