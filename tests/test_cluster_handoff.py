"""One conversation, one session, one history on any node (SPEC 12, issue 23): two gateways in
this process on one PostgreSQL, on trio's MockClock (inline database calls, so the owner finds
a handed-off turn at its poll: no notifications here; `scripts/bench_handoff.py` measures
the notified path with real processes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
import trio
from helpers import age_heartbeat

from trio_gateway.app.cluster import session_store_for
from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.log import EventLog
from trio_gateway.models.base import Message, ModelReply
from trio_gateway.policy.config import ClusterConfig
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import Notice, ScriptedModel, gateway_deps, quick_config

pytestmark = pytest.mark.postgres

CLUSTER = ClusterConfig(backend="postgres", heartbeat_seconds=1, dead_after_seconds=5, poll_seconds=0.2)
ALICE = Origin("console", "alice", None)
NO_STALL = {"gateway.stalledTaskDetection.enabled": False}


@attrs.define
class RecordingModel(ScriptedModel):
    """Echo, and every request's messages kept: what history each turn was run with."""

    requests: list[list[Message]] = attrs.Factory(list)

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Any) -> ModelReply:
        self.requests.append(list(messages))
        return await super().complete(messages, tools, progress)


@attrs.define(eq=False)
class KillableNode(ClusterNode):
    killed: bool = False

    async def leave(self, *, forget: bool = False) -> None:
        if not self.killed:  # killed: no release, no goodbye; peers judge it by its heartbeat
            await super().leave(forget=forget)


@attrs.define
class Member:
    name: str
    gateway: Gateway
    node: ClusterNode
    notices: list[Notice]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)

    def replies(self) -> list[str]:
        return [n.text for n in self.notices]

    def kill(self) -> None:
        """As SIGKILL: it stops where it is, leaving nothing (its leases and heartbeat stay)."""
        assert isinstance(self.node, KillableNode)
        self.node.killed = True
        self.scope.cancel(reason="killed")


Start = Callable[[str], Awaitable[Member]]


@pytest.fixture
async def members(
    tmp_path: Path, pg_dsn: str, autojump_clock: trio.abc.Clock
) -> AsyncIterator[tuple[Start, RecordingModel]]:
    model = RecordingModel()
    made: list[Member] = []
    async with trio.open_nursery() as nursery:

        async def start(name: str) -> Member:
            db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=4)
            # The node's clock is bound to its gateway's when it serves.
            node = KillableNode.create(
                db, attrs.evolve(CLUSTER, node_id=name), EventLog([]), dt.datetime.now, lease_seconds=60
            )
            notices: list[Notice] = []
            config = quick_config(**NO_STALL)
            deps = gateway_deps(
                tmp_path / name,
                config,
                EventLog([]),
                model=model,
                notices=notices,
                servers=[node.serve],
                session_id_prefix=f"s-{name}",
            )
            gateway = Gateway(attrs.evolve(deps, session_store=session_store_for(node)), config)
            member = Member(name, gateway, node, notices)

            async def run(*, task_status: trio.TaskStatus[None]) -> None:
                with member.scope:
                    await gateway.serve(task_status=task_status)

            await nursery.start(run)
            made.append(member)
            return member

        yield start, model
        for member in made:
            if not member.scope.cancel_called:
                member.gateway.request_drain("stop")
    for member in made:
        member.node.db.pool.close()


async def until(what: str, check: Callable[[], bool], seconds: float = 60) -> None:
    """Virtual time: polling costs nothing."""
    with trio.move_on_after(seconds):
        while not check():  # noqa: ASYNC110 (state across two gateways, polled in virtual time)
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def sessions_in(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [str(r[0]) for r in conn.execute("SELECT id FROM sessions ORDER BY id").fetchall()]


def history_of(request: list[Message]) -> list[str]:
    return [str(m.get("content")) for m in request if m["role"] in ("user", "assistant")]


async def test_turns_alternating_between_nodes_share_one_session_and_one_history(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    start, model = members
    a, b = await start("a"), await start("b")
    sid, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's first reply", lambda: a.replies() == ["echo: one"])
    for i, (node, prompt) in enumerate([(b, "two"), (a, "three"), (b, "four")]):
        other, turn_id = await node.gateway.submit(agent_id="main", origin=ALICE, prompt=prompt)
        assert other == sid  # never a second session
        if node is b:
            assert sid not in b.gateway.sessions  # handed to the owner, not run here
            # `wait` on the accepting node reads the outcome the owner wrote.
            assert b.gateway.cluster is not None
            with trio.fail_after(30):
                assert await b.gateway.cluster.outcome(sid, turn_id) == (True, f"echo: {prompt}")
        await until(f"reply {i + 2}", lambda n=i + 2: len(a.replies()) == n)
    # The owner ran every turn, in order, each with the whole history before it.
    assert a.replies() == ["echo: one", "echo: two", "echo: three", "echo: four"]
    assert b.replies() == []
    assert history_of(model.requests[1]) == ["one", "echo: one", "two"]
    assert history_of(model.requests[3]) == ["one", "echo: one", "two", "echo: two", "three", "echo: three", "four"]
    assert sessions_in(pg_dsn) == [sid]


async def test_a_killed_owners_session_is_adopted_with_its_whole_history_and_handed_turns(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    start, model = members
    a, b = await start("a"), await start("b")
    sid, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's reply", lambda: a.replies() == ["echo: one"])
    a.kill()
    await trio.sleep(1)
    # a still looks alive (its heartbeat is fresh): the turn is handed to it, and waits.
    handed_sid, _ = await b.gateway.submit(agent_id="main", origin=ALICE, prompt="two")
    assert handed_sid == sid
    await trio.sleep(2)
    assert b.replies() == []
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 0.5)  # a is dead on the database's clock
    # The next turn comes before b's sweep looks: b takes the session over to accept it, with
    # its history and the turn handed to a, which runs first.
    again, _ = await b.gateway.submit(agent_id="main", origin=ALICE, prompt="three")
    assert again == sid
    await until("b's replies", lambda: len(b.replies()) == 2)
    assert b.replies() == ["echo: two", "echo: three"]
    assert history_of(model.requests[-2]) == ["one", "echo: one", "two"]
    assert history_of(model.requests[-1]) == ["one", "echo: one", "two", "echo: two", "three"]
    assert sessions_in(pg_dsn) == [sid]
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM handoffs").fetchone() == (0,)


async def test_a_new_conversation_heard_on_two_nodes_at_once_opens_one_session(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    start, _ = members
    a, b = await start("a"), await start("b")
    bob = Origin("console", "bob", None)
    async with trio.open_nursery() as nursery:
        got: list[str] = []

        async def submit(node: Member, prompt: str) -> None:
            sid, _ = await node.gateway.submit(agent_id="main", origin=bob, prompt=prompt)
            got.append(sid)

        nursery.start_soon(submit, a, "from a")
        nursery.start_soon(submit, b, "from b")
    assert len(set(got)) == 1
    await until("both replies", lambda: len(a.replies() + b.replies()) == 2)
    assert sessions_in(pg_dsn) == got[:1]


async def test_a_turn_accepted_on_the_owner_runs_after_one_handed_to_it_before(
    members: tuple[Start, RecordingModel],
) -> None:
    """SPEC 15 order across nodes: a turn handed to the owner and answered 202 comes before the
    conversation's next turn, even when that one reaches the owner itself before the owner
    looked for handed-off turns (the chaos soak, seed 14: the later reply came first)."""
    start, _ = members
    a, b = await start("a"), await start("b")
    await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's first reply", lambda: a.replies() == ["echo: one"])
    await b.gateway.submit(agent_id="main", origin=ALICE, prompt="two")  # a's look is asleep
    await a.gateway.submit(agent_id="main", origin=ALICE, prompt="three")
    await until("three replies", lambda: len(a.replies()) == 3)
    assert a.replies() == ["echo: one", "echo: two", "echo: three"]
