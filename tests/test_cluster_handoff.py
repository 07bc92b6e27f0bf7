"""One conversation, one session, one history on any node (SPEC 12, issue 23): two gateways in
this process on one PostgreSQL, on trio's MockClock (inline database calls, so the owner finds
a handed-off turn at its poll: no notifications here; `scripts/bench_handoff.py` measures
the notified path with real processes)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, Unpack

import attrs
import psycopg
import pytest
import trio
from helpers import age_heartbeat

from trio_gateway.app.cluster import session_store_for
from trio_gateway.cluster import handoffs
from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.cluster.pg_sessions import PgSessionStore
from trio_gateway.delivery.outbox import Notice as NoticeArgs
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.errors import ClusterDatabaseError
from trio_gateway.log import EventLog
from trio_gateway.models.base import Message, ModelReply
from trio_gateway.policy.config import ClusterConfig, Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.deps import DeliveryFactory, DeliveryHost
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import (
    Notice,
    RecordingDelivery,
    RecordingOutbox,
    ScriptedModel,
    gateway_deps,
    quick_config,
    recording,
)
from trio_gateway.storage.base import HandedOff
from trio_gateway.storage.sessions import SessionRecord

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


@attrs.define
class QueuedRecordingOutbox(RecordingOutbox):
    """Records a notice only once the shared queue took it, fenced as in production (a node
    that lost the session is refused); nothing sends from that queue here."""

    queued: Outbox | None = None
    node: KillableNode | None = None

    async def submit(self, **notice: Unpack[NoticeArgs]) -> Notice:
        assert self.queued is not None
        await self.queued.submit(**notice)
        if self.node is not None and self.node.on_enqueued is not None:
            self.node.on_enqueued()  # a test's kill, the entry in the queue
            await trio.lowlevel.checkpoint()
        return await super().submit(**notice)


def queued_recording(node: ClusterNode, notices: list[Notice]) -> DeliveryFactory:
    async def factory(config: Config, gateway: DeliveryHost) -> RecordingDelivery:
        await trio.lowlevel.checkpoint()
        assert gateway.wall is not None
        queued = Outbox(node.queue, config.agents, gateway.wall, gateway.log)
        killable = node if isinstance(node, KillableNode) else None
        return recording(gateway, QueuedRecordingOutbox(config, notices, queued=queued, node=killable))

    return factory


@attrs.define(eq=False)
class KillableNode(ClusterNode):
    killed: bool = False
    # As SIGSTOP, for what peers see: no heartbeat (its turns go on, as after a SIGCONT).
    stalled: bool = False
    # Called once a notice of this node is in the shared queue (a test's kill at that instant).
    on_enqueued: Callable[[], None] | None = None

    async def heartbeat(self) -> None:
        if not self.stalled:
            await super().heartbeat()

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


class Start(Protocol):
    def __call__(self, name: str, *, store: type[PgSessionStore] = PgSessionStore) -> Awaitable[Member]: ...


@pytest.fixture
async def members(
    tmp_path: Path, pg_dsn: str, autojump_clock: trio.abc.Clock
) -> AsyncIterator[tuple[Start, RecordingModel]]:
    model = RecordingModel()
    made: list[Member] = []
    async with trio.open_nursery() as nursery:

        async def start(name: str, *, store: type[PgSessionStore] = PgSessionStore) -> Member:
            db = Database.create(pg_dsn, statement_timeout=5, inline=True, max_size=4)
            # The node's clock is bound to its gateway's when it serves.
            node = KillableNode.create(
                db, attrs.evolve(CLUSTER, node_id=name), EventLog([]), dt.datetime.now, lease_seconds=60
            )
            if store is not PgSessionStore:
                node.sessions = node.queue.fence = store(db, node.leases, node.log, node.now)
            notices: list[Notice] = []
            config = quick_config(**NO_STALL)
            deps = gateway_deps(
                tmp_path / name,
                config,
                EventLog([]),
                model=model,
                delivery_factory=queued_recording(node, notices),
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


@attrs.define
class HeldLooks(PgSessionStore):
    """Its looks for handed-off turns wait while `held`: the turns then found in one look."""

    held: bool = False
    released: trio.Event = attrs.Factory(trio.Event)

    async def handed_off(self, session_id: str | None = None) -> list[HandedOff]:
        while self.held:
            await self.released.wait()
        return await super().handed_off(session_id)

    def release(self) -> None:
        self.held = False
        self.released.set()


async def test_turns_handed_to_a_busy_owner_in_one_look_run_in_the_order_they_were_accepted(
    members: tuple[Start, RecordingModel],
) -> None:
    """The owner queues every turn one look found in one step. Their places in line are taken
    then, not when their tasks first run: trio runs the tasks started in one step in either
    order (it reverses a batch half the time), so six conversations make a swap near certain
    were the places taken in the tasks."""
    start, _ = members
    a, b = await start("a", store=HeldLooks), await start("b")
    people = [Origin("console", f"person-{i}", None) for i in range(6)]
    for person in people:
        await a.gateway.submit(agent_id="main", origin=person, prompt="/slow 1 3")  # a's, busy
    assert isinstance(a.node.sessions, HeldLooks)
    a.node.sessions.held = True
    for person in people:
        for prompt in ("two", "three", "four"):
            await b.gateway.submit(agent_id="main", origin=person, prompt=prompt)
    a.node.sessions.release()  # its next look finds three turns of each conversation
    await until("every reply", lambda: len(a.replies()) == 4 * len(people))
    for person in people:
        theirs = [n.text for n in a.notices if n.origin == person]
        assert theirs == ["slow done: /slow 1 3", "echo: two", "echo: three", "echo: four"], (person, theirs)


async def dies_mid_turn(member: Member) -> str:
    """`member` killed a second into ALICE's 4-second turn, and dead on the database's clock
    (its peers' sweeps adopt the session now); the session's id."""
    sid, _ = await member.gateway.submit(agent_id="main", origin=ALICE, prompt="/slow 1 4")
    await trio.sleep(1)
    member.kill()
    await age_heartbeat(member.node, CLUSTER.dead_after_seconds + 0.5)
    return sid


@attrs.define
class SlowFirstWrite(PgSessionStore):
    """The first write of a record that `picks` takes a second (of virtual time): the window
    in which a test sends the conversation's next turn."""

    slowed: trio.Event = attrs.Factory(trio.Event)

    def picks(self, record: SessionRecord) -> bool:
        raise NotImplementedError

    async def save(self, record: SessionRecord) -> None:
        if not self.slowed.is_set() and self.picks(record):
            self.slowed.set()
            await trio.sleep(1)
        await super().save(record)


@attrs.define
class SlowResumes(SlowFirstWrite):
    """The write that makes the first resumed turn durable: the adopting node accepts the
    conversation's next turn meanwhile."""

    def picks(self, record: SessionRecord) -> bool:
        return any(turn.resumes for turn in record.turns)


async def test_a_turn_accepted_while_the_sweep_resumes_an_adopted_session_runs_after_its_turns(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    """The chaos soak (seed 10): b's sweep adopts the session of a dead a and resumes its turn,
    writing it before it starts it; a turn of that conversation accepted on b during the write
    joins the session b now holds, and must still run after the resumed one (SPEC 15)."""
    start, _ = members
    a = await start("a")
    b = await start("b", store=SlowResumes)
    sid = await dies_mid_turn(a)
    assert isinstance(b.node.sessions, SlowResumes)
    with trio.fail_after(30):
        await b.node.sessions.slowed.wait()  # the sweep adopted it and is writing the resumed turn
    assert sid in b.gateway.sessions
    again, _ = await b.gateway.submit(agent_id="main", origin=ALICE, prompt="after")
    assert again == sid
    await until("b's replies", lambda: len(b.replies()) == 2)
    assert b.replies() == ["slow done: /slow 1 4", "echo: after"]
    assert sessions_in(pg_dsn) == [sid]


@attrs.define
class LostResumeWrite(PgSessionStore):
    """The write that makes the first resumed turn durable fails as when PostgreSQL restarts."""

    failed: bool = False

    async def save(self, record: SessionRecord) -> None:
        if not self.failed and any(turn.resumes for turn in record.turns):
            self.failed = True
            await trio.lowlevel.checkpoint()
            raise ClusterDatabaseError("cluster database unavailable: the server restarted (a test's)")
        await super().save(record)


async def test_an_adopted_turn_runs_even_when_its_resume_write_fails(
    members: tuple[Start, RecordingModel],
) -> None:
    """A write of a resumed turn that fails (the database restarting) is logged and the turn
    runs: raised, it left the turn in a session held here that nothing would start again."""
    start, _ = members
    a = await start("a")
    b = await start("b", store=LostResumeWrite)
    sid = await dies_mid_turn(a)
    await until("b's reply", lambda: b.replies() == ["slow done: /slow 1 4"], seconds=20)
    assert isinstance(b.node.sessions, LostResumeWrite)
    assert b.node.sessions.failed
    await until("the turn's end written", lambda: b.gateway.sessions[sid].record.turns == [])


async def test_a_take_over_whose_read_failed_is_tried_again_by_the_sweep(
    members: tuple[Start, RecordingModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """b's sweep took the lease of a dead a's session, then its read of the record failed
    (PostgreSQL restarting): no peer adopts a session whose lease a live node holds, so b's
    next sweep reads it again, and the turn runs with its history."""
    start, model = members
    a, b = await start("a"), await start("b")
    read_handoffs = handoffs.handoffs_of
    failures: list[str] = []

    def fails_once(conn: psycopg.Connection[Any], session_id: str) -> list[HandedOff]:
        if not failures:
            failures.append(session_id)
            raise psycopg.OperationalError("server closed the connection unexpectedly (a test's)")
        return read_handoffs(conn, session_id)

    monkeypatch.setattr(handoffs, "handoffs_of", fails_once)
    await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's reply", lambda: a.replies() == ["echo: one"])
    sid = await dies_mid_turn(a)
    await until("b's reply", lambda: b.replies() == ["slow done: /slow 1 4"], seconds=20)
    assert failures == [sid]
    assert history_of(model.requests[-1]) == ["one", "echo: one", "/slow 1 4"]


@attrs.define
class SlowTakeOvers(PgSessionStore):
    """Its first take-over that reads a record takes a second (of virtual time) after that:
    the lease is this node's, the record not yet in its table."""

    slowed: trio.Event = attrs.Factory(trio.Event)

    async def _take_over_now(self, session_id: str) -> SessionRecord | None:
        record = await super()._take_over_now(session_id)
        if record is not None and not self.slowed.is_set():
            self.slowed.set()
            await trio.sleep(1)
        return record


async def test_a_turn_arriving_while_the_sweep_takes_its_session_over_joins_it(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    """The chaos soak (seed 5): b's sweep took the lease of a dead a's session; before the
    record reached b's table, a turn of that conversation came to b, found the lease b's and
    the table empty, and opened a fresh record over the stored one (the history gone), which
    the sweep's adoption then threw away with the turn: accepted, never answered. The turn
    waits for the take-over in flight and joins the session it brings."""
    start, model = members
    a = await start("a")
    b = await start("b", store=SlowTakeOvers)
    sid, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's reply", lambda: a.replies() == ["echo: one"])
    await dies_mid_turn(a)
    assert isinstance(b.node.sessions, SlowTakeOvers)
    with trio.fail_after(30):
        await b.node.sessions.slowed.wait()
    again, _ = await b.gateway.submit(agent_id="main", origin=ALICE, prompt="after")
    assert again == sid
    await until("b's replies", lambda: len(b.replies()) == 2)
    assert b.replies() == ["slow done: /slow 1 4", "echo: after"]
    assert history_of(model.requests[-1]) == ["one", "echo: one", "/slow 1 4", "slow done: /slow 1 4", "after"]
    assert sessions_in(pg_dsn) == [sid]


async def test_a_node_killed_between_a_reply_and_its_turns_end_leaves_the_reply_not_the_turn(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    """The reply is written into the session before it is enqueued (cluster mode): the adopter
    of a node killed right after the enqueue delivers that reply under the same key, one row,
    and never runs the model for the turn again (nor, for a turn resumed once already, gives
    it up with a failure notice after the person had the reply)."""
    start, model = members
    a, b = await start("a"), await start("b")
    assert isinstance(a.node, KillableNode)
    a.node.on_enqueued = a.kill
    sid, turn_id = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="hello")
    await until("a killed after enqueueing its reply", lambda: a.node.killed)
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 0.5)
    await until("b adopts the session", lambda: sid in b.gateway.sessions)
    await until("b ends the turn", lambda: b.gateway.sessions[sid].record.turns == [])
    assert b.replies() == ["echo: hello"]
    assert len(model.requests) == 1  # the model was asked once
    with psycopg.connect(pg_dsn) as conn:
        keys = conn.execute("SELECT idempotency_key FROM deliveries").fetchall()
    assert keys == [(turn_id,)]
    history = b.gateway.sessions[sid].record.history
    assert [m["content"] for m in history] == ["hello", "echo: hello"]


@attrs.define
class SlowKeptReply(SlowFirstWrite):
    """The first write of a record holding a turn's reply: the adopter's, before it delivers
    the reply a dead node kept."""

    def picks(self, record: SessionRecord) -> bool:
        return any(turn.reply is not None for turn in record.turns)


async def test_a_turn_accepted_while_the_adopter_delivers_a_kept_reply_answers_after_it(
    members: tuple[Start, RecordingModel],
) -> None:
    """The kept reply's turn keeps its place in the line until its reply is enqueued: a turn
    of that conversation accepted meanwhile on the adopter answers after it (SPEC 15)."""
    start, _ = members
    a = await start("a")
    b = await start("b", store=SlowKeptReply)
    assert isinstance(a.node, KillableNode)
    a.node.on_enqueued = a.kill
    await a.gateway.submit(agent_id="main", origin=ALICE, prompt="hello")
    await until("a killed after enqueueing its reply", lambda: a.node.killed)
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 0.5)
    assert isinstance(b.node.sessions, SlowKeptReply)
    with trio.fail_after(30):
        await b.node.sessions.slowed.wait()  # b adopted the session and writes the kept reply
    await b.gateway.submit(agent_id="main", origin=ALICE, prompt="after")
    await until("b's replies", lambda: len(b.replies()) == 2)
    assert b.replies() == ["echo: hello", "echo: after"]


async def test_new_on_one_node_starts_the_conversations_next_session_on_any_node(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    """`/new` (SPEC 15) ends the session cluster-wide: the next turn, heard on another node,
    opens a new session there, and the first node's next turn joins that one, not the old."""
    start, model = members
    a, b = await start("a"), await start("b")
    old, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="one")
    await until("a's first reply", lambda: a.replies() == ["echo: one"])
    ended = await a.gateway.submit_inbound(
        agent_id="main", origin=ALICE, prompt="/new", inbound_id="m-new", sender="alice", command="new"
    )
    assert ended is not None
    assert ended[0] == old
    await until("'New session.'", lambda: a.replies() == ["echo: one", "New session."])
    new, _ = await b.gateway.submit(agent_id="main", origin=ALICE, prompt="two")
    assert new != old
    again, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="three")
    assert again == new  # handed to b, the new session's owner
    await until("b's two replies", lambda: b.replies() == ["echo: two", "echo: three"])
    assert history_of(model.requests[-1]) == ["two", "echo: two", "three"]  # the old history is not in it
    assert sessions_in(pg_dsn) == sorted([old, new])


async def test_a_node_stalled_mid_turn_never_answers_for_the_session_a_peer_took_over(
    members: tuple[Start, RecordingModel], pg_dsn: str
) -> None:
    """The chaos soak (seeds 1, 6, 10): a node SIGSTOPped mid-turn is judged dead, a peer
    adopts the session and ends the turn; back, the stalled node finishes the turn too. Its
    reply's enqueue is refused (fenced by the session's lease epoch), so the person gets one
    answer, and it forgets the session."""
    start, _ = members
    a, b = await start("a"), await start("b")
    sid, _ = await a.gateway.submit(agent_id="main", origin=ALICE, prompt="/slow 1 20")
    await trio.sleep(1)
    assert isinstance(a.node, KillableNode)
    a.node.stalled = True
    await age_heartbeat(a.node, CLUSTER.dead_after_seconds + 0.5)
    await until("b adopts the session", lambda: sid in b.gateway.sessions)
    await until("a forgets the session", lambda: sid not in a.gateway.sessions)
    await until("b's reply", lambda: len(a.replies() + b.replies()) >= 1)
    await trio.sleep(30)  # time for a second answer, were there one
    assert a.replies() + b.replies() == ["slow done: /slow 1 20"], (a.replies(), b.replies())
    assert b.gateway.sessions[sid].record.turns == []
    assert sessions_in(pg_dsn) == [sid]
