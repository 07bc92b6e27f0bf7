"""The gateway's lifecycle: one root nursery, one generation of work at a time.

    trio.run(gateway.serve)
    └── root nursery                 servers (HTTP) live here, across generations
        └── generation N
            ├── services nursery     delivery worker, stall watchdog, cron
            └── work scope
                └── work nursery     one task per busy session (turns, subagents)

A restart closes intake, stops cron and the delivery worker (their state is on disk), drains
the work nursery under ONE deadline (`drain.drain`), closes the generation's model and channel
clients, reloads the configuration and opens generation N+1 in the same process. A stop does
the same and then cancels the root nursery.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from functools import partial
from typing import Any, Literal

import attrs
import trio
from trio_util import AsyncValue

from trio_gateway.channels.listen import ListenerSupervisor
from trio_gateway.errors import (
    BadRequestError,
    ConfigError,
    GatewayDrainingError,
    NotFoundError,
    SessionElsewhereError,
)
from trio_gateway.log import EventLog
from trio_gateway.models.base import Model
from trio_gateway.policy.commands import CommandName
from trio_gateway.policy.config import Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime import agent, commands
from trio_gateway.runtime.cron import run_cron
from trio_gateway.runtime.deps import DeliveryService, GatewayDeps
from trio_gateway.runtime.handoff import ClusterIntake, TurnAsked
from trio_gateway.runtime.resume import resume_each
from trio_gateway.runtime.session import Runtime, Session
from trio_gateway.runtime.sessions import SessionTable
from trio_gateway.storage.base import HandedOff, SessionStorage
from trio_gateway.storage.disk import StorageHealth
from trio_gateway.storage.sessions import SessionRecord, TurnKind, TurnRecord
from trio_gateway.tools.registry import ToolBox
from trio_gateway.tools.registry import preload as preload_tools
from trio_gateway.work import drain as shutdown
from trio_gateway.work.clock import WallClock
from trio_gateway.work.drain import DrainCounts, DrainKind, DrainReport, DrainRequest, collector_paused, drain
from trio_gateway.work.loop import LoopWatch
from trio_gateway.work.stall import StallWatchdog
from trio_gateway.work.units import WorkRegistry

State = Literal["starting", "running", "draining", "stopped"]


@attrs.define(eq=False)
class Generation:
    number: int
    config: Config
    runtime: Runtime
    work: trio.Nursery


@attrs.define(eq=False)
class Gateway:
    deps: GatewayDeps
    config: Config
    state: AsyncValue[State] = attrs.Factory(lambda: AsyncValue("starting"))
    generation_number: int = 0
    current: Generation | None = None
    table: SessionTable = attrs.field(init=False)
    cluster: ClusterIntake | None = attrs.field(init=False)  # one conversation, one session, any node
    busy: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    registry: WorkRegistry = attrs.field(init=False)
    drains: list[DrainReport] = attrs.Factory(list)
    started_at: float = 0.0
    wall: WallClock | None = None
    delivery: DeliveryService | None = None
    watchdog: StallWatchdog | None = None
    loop_watch: LoopWatch | None = None  # the event loop's watchdog (work/loop.py), for /metrics
    # Disks refusing writes right now: intake answers 507 while accepted work waits.
    storage: StorageHealth = attrs.Factory(StorageHealth)
    listeners: ListenerSupervisor | None = None
    tools: ToolBox | None = None
    tool_outcomes: Counter[tuple[str, str]] = attrs.Factory(Counter)
    _drain: DrainRequest | None = None
    _drain_wanted: trio.Event = attrs.Factory(trio.Event)

    def __attrs_post_init__(self) -> None:
        self.registry = WorkRegistry(self.deps.log)
        store = self.deps.session_store(self.forget_session)
        self.table = SessionTable(store, self.deps.log, self._now, self.deps.session_id_prefix)
        self.cluster = ClusterIntake.over(store, self.table, self.log, self)

    @property
    def store(self) -> SessionStorage:
        """Where sessions are saved: the table's store, which turns save through too."""
        return self.table.store

    @property
    def sessions(self) -> dict[str, Session]:
        """The sessions in memory, by id (the table's; read-only use outside the runtime)."""
        return self.table.sessions

    @property
    def log(self) -> EventLog:
        return self.deps.log

    # --- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> DrainReport:
        """Run until stopped. `task_status.started()` fires when generation 1 accepts work."""
        self.started_at = trio.current_time()
        self.wall = WallClock.start(self.deps.wall_base)
        await self.table.load()
        started = task_status
        async with trio.open_nursery() as root:
            for server in self.deps.servers:
                await root.start(server, self)
            completed: DrainRequest | None = None
            while True:
                request = await self._run_generation(self.config, started, completed)
                started = trio.TASK_STATUS_IGNORED
                if request.kind == "stop":
                    break
                self.config = await self._reload(self.config, request)
                completed = request
            self.state.value = "stopped"
            request.done.set()
            root.cancel_scope.cancel()
        assert request.report is not None
        return request.report

    async def _reload(self, old: Config, request: DrainRequest) -> Config:
        """A restart reloads `gateway.json`; a bad file keeps the running config (a restart
        must never leave the operator with no gateway), and the restart's report says so."""
        try:  # off the loop, and a hung disk fails the reload (issue 25)
            with trio.fail_after(10):
                config = await self.deps.runner(self.deps.load_config)
            self.deps.preflight(config)
            return config
        except Exception as exc:  # the reader makes every bad file a ConfigError; this is the belt
            why = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
            self.log.error("RESTART", "Config reload failed; keeping the current config", error=why)
            if request.report is not None:
                request.report = attrs.evolve(request.report, config_rejected=why)
                self.drains[-1] = request.report
            return old

    async def _run_generation(self, config: Config, task_status: Any, completed: DrainRequest | None) -> DrainRequest:
        # `generation_number` names the generation that runs or drains; it moves to N+1 only
        # when N+1 accepts work, so `/healthz` never shows "draining" with the new number.
        number = self.generation_number + 1
        async with AsyncExitStack() as resources:
            models = await self._open_models(config, resources)
            delivery = await self.deps.delivery_factory(config, self)
            resources.push_async_callback(self._close_bounded(delivery.aclose, config))
            self.delivery = delivery
            assert self.wall is not None
            await preload_tools(config)
            tools = self.deps.tools_factory(config, self.registry, self.log)
            tools.inherit(self.tools)
            tools.outcomes = self.tool_outcomes  # a counter for /metrics: it never goes back
            self.tools = tools
            resources.push_async_callback(self._close_bounded(tools.aclose, config))
            rt = Runtime(config, models, self.registry, delivery.outbox, self.store, self.log, self.wall.now, tools)
            rt.ledger = self.deps.model_ledger  # tokens and cool-downs outlive the generation
            rt.show_typing_through(getattr(delivery, "channels", None), self.state)  # stops when draining
            self.watchdog = StallWatchdog(
                self.registry, config.gateway.stalled_task_detection, self.log, self.table.queue_depth
            )
            listeners = await self._open_listeners(config, delivery)
            async with trio.open_nursery() as services:
                cron_scope = trio.CancelScope()
                services.start_soon(self._run_cron, cron_scope, config)
                if listeners is not None:
                    services.start_soon(listeners.run)
                # The worker keeps sending through the drain's wait (a reply that finishes
                # then reaches its user now) but is never waited for: it lives here, not in
                # the work nursery, and is cancelled the moment the work is gone.
                services.start_soon(delivery.run)
                services.start_soon(self.watchdog.run)
                services.start_soon(self.table.evict_idle, config.gateway.session_evict_after_seconds)
                # MCP servers live until the work is gone (a call in flight may still finish
                # during the drain's wait), then stop with the services, each stop bounded.
                services.start_soon(tools.run)
                cut = ExitStack()
                with cut, trio.CancelScope() as work_scope:
                    async with trio.open_nursery() as work:
                        self.current = Generation(number, config, rt, work)
                        leftover = self.table.leftover()
                        self.generation_number = number
                        self.state.value = "running"
                        self.log.info("RESTART", "accepting work", lead={"generation": number})
                        if leftover:
                            # Resuming is work like any other: it must not delay accepting new
                            # work, and it is busy from this instant, so nobody sees "idle" first.
                            self.busy.value += 1
                            work.start_soon(self._resume_turns, self.current, leftover)
                        if completed is not None:
                            self._complete_restart(completed, number)
                        task_status.started()
                        request = await self._wait_for_drain_request()
                        self.state.value = "draining"
                        cron_scope.cancel()
                        if listeners is not None:
                            listeners.stop()  # already at the request; here for a drain asked while starting
                        timed_out, left = await drain(
                            request,
                            busy=self.busy,
                            counts=self._counts,
                            work_scope=work_scope,
                            progress_interval=config.gateway.drain.progress_interval_seconds,
                            log=self.log,
                        )
                        if timed_out:
                            cut.enter_context(collector_paused())
                services.cancel_scope.cancel()
        self._finish_drain(request, timed_out, left)
        return request

    async def _open_listeners(self, config: Config, delivery: DeliveryService) -> ListenerSupervisor | None:
        factory = self.deps.listener_factory
        self.listeners = None if factory is None else await factory(config, self.submit_inbound, delivery)
        return self.listeners

    async def _open_models(self, config: Config, resources: AsyncExitStack) -> dict[str, Model]:
        models = {name: self.deps.model_factory(model_config) for name, model_config in config.models.items()}
        for model in models.values():
            resources.push_async_callback(self._close_bounded(model.aclose, config))
        return models

    @staticmethod
    def _close_bounded(close: Callable[[], Awaitable[None]], config: Config) -> Callable[[], Awaitable[None]]:
        return partial(shutdown.close_bounded, close, config.gateway.channel_stop_timeout_seconds)

    async def _run_cron(self, scope: trio.CancelScope, config: Config) -> None:
        """Cron stops the moment a drain starts: a scheduled run is not owed to anyone."""
        with scope:
            await run_cron(config.cron, self, self.log)

    def _finish_drain(self, request: DrainRequest, timed_out: bool, left: DrainCounts) -> None:
        report = request.finish(timed_out, left)
        for unit in left.blockers if timed_out else ():
            # Drain aborts count with stall aborts (metrics), without a log line each.
            self.registry.count_abort(unit.kind)
        self.drains.append(report)
        report.log_finished(self.log, self.generation_number)

    # --- drain requests ------------------------------------------------------------------

    def request_drain(self, kind: DrainKind, *, force: bool = False, timeout: float | None = None) -> DrainRequest:
        """Ask for a restart or a stop. A request while a drain runs joins that drain."""
        if timeout is not None and not timeout > 0:
            raise BadRequestError(f"timeoutSeconds must be a positive number, got {timeout}")
        default = self.config.gateway.drain.timeout_seconds
        seconds = timeout if timeout is not None else default
        if self._drain is not None:
            self._drain.join(kind=kind, force=force, timeout_seconds=seconds)
            return self._drain
        self._drain = DrainRequest(kind, force, seconds, trio.current_time())
        # Intake closes at the request, not when the generation loop next runs: a submit right
        # after a restart request must already get GatewayDrainingError.
        self.state.value = "draining"
        if self.listeners is not None:
            # Listeners stop with intake (SPEC 11): their long polls and sockets close now.
            self.listeners.stop()
        self._drain_wanted.set()
        return self._drain

    def _complete_restart(self, request: DrainRequest, number: int) -> None:
        """Generation `number` accepts work: the restart that drained its predecessor is done.
        Only that request: one made while this generation was starting stays pending, and this
        generation drains for it at once."""
        if request.kind == "stop":
            # A stop joined the restart after its drain had finished: honour it now.
            self._drain_wanted.set()
            return
        request.new_generation = number
        request.done.set()
        if self._drain is request:
            self._drain = None

    async def _wait_for_drain_request(self) -> DrainRequest:
        await self._drain_wanted.wait()
        self._drain_wanted = trio.Event()
        assert self._drain is not None
        return self._drain

    @property
    def draining(self) -> DrainRequest | None:
        return self._drain

    # --- intake --------------------------------------------------------------------------

    async def submit(
        self,
        *,
        agent_id: str,
        origin: Origin | None,
        prompt: str,
        kind: TurnKind = "inbound",
        session_id: str | None = None,
    ) -> tuple[str, str]:
        """Accept one turn: written to `sessions/` before this returns, then started.
        Returns (session id, turn id). Raises `GatewayDrainingError` while draining."""
        accepted = await self._accept(TurnAsked(agent_id, origin, prompt, kind, session_id, None))
        assert accepted is not None
        return accepted

    async def submit_inbound(self, *, agent_id: str, origin: Origin, prompt: str, inbound_id: str | None,
        sender: str | None = None, command: CommandName | None = None) -> tuple[str, str] | None:  # fmt: skip
        """A heard message (SPEC 11): (session, turn) of a new durable turn; None: its platform id was
        heard in this conversation already. A chat command is answered at once (runtime/commands.py)."""
        if command is not None:
            return await commands.handle(self.table, self._accepting().runtime, command, agent_id=agent_id,
                                         origin=origin, sender=sender, inbound_id=inbound_id)  # fmt: skip
        return await self._accept(TurnAsked(agent_id, origin, prompt, "inbound", None, inbound_id))

    async def _accept(self, asked: TurnAsked) -> tuple[str, str] | None:
        gen = self._accepting()
        if asked.agent_id not in gen.config.agents:
            raise BadRequestError(f"agent: no agent named {asked.agent_id!r}")
        self.storage.check()  # a full disk refuses new work (507); accepted work is retried
        if self.cluster is None:
            return await self._accept_here(gen, asked)
        return await self.cluster.accept(asked, partial(self._accept_here, gen))

    async def _accept_here(self, gen: Generation, asked: TurnAsked) -> tuple[str, str] | None:
        """Accept a turn into the session held here (or a new one here)."""
        agent_id, origin, prompt, kind, session_id, inbound_id = attrs.astuple(asked, recurse=False)
        session, created = await self.table.session_for(agent_id, origin, session_id, self.generation_number)
        if inbound_id is not None and session.record.heard(inbound_id):
            return None
        turn = TurnRecord(session.next_id("turn"), prompt, origin, kind, accepted_at=self._now())
        session.record.turns.append(turn)
        if inbound_id is not None:
            session.record.remember_inbound(inbound_id)
        try:
            await self.table.save_accepted(session)
        except BaseException:
            self.table.forget_unsaved(session, turn, created, inbound_id)
            raise
        if not self.table.holds(session):
            # Cluster mode: the write was refused, another node owns the session (forgotten
            # here meanwhile); the turn is placed again (`handoff.py`).
            raise SessionElsewhereError(f"session {session.id} is owned by another node; try again")
        self.table.touch(session.id)
        # Saving yields: a drain may have begun meanwhile. The turn is on disk as accepted,
        # so the next generation runs it; starting it now would only lengthen this drain.
        if self.state.value == "running" and self.current is gen:
            await self._start_turn(gen, session, turn)
        return session.id, turn.id

    def _accepting(self) -> Generation:
        if self.state.value != "running" or self.current is None:
            raise GatewayDrainingError("the gateway is draining for a restart or stop; try again shortly")
        return self.current

    async def _start_turn(self, gen: Generation, session: Session, turn: TurnRecord) -> None:
        # A caller that waited while a drain began (`take`'s write) leaves it to the next one.
        if self.current is gen and self.state.value == "running" and not agent.queue_turn(session, gen.runtime, turn):
            await gen.work.start(self._session_task, gen.runtime, session, turn)

    async def _session_task(self, rt: Runtime, session: Session, turn: TurnRecord, *, task_status: Any) -> None:
        self.busy.value += 1
        try:
            await agent.run_session(rt, session, turn, task_status=task_status)
        finally:
            self.busy.value -= 1

    async def _resume_turns(self, gen: Generation, leftover: list[tuple[Session, TurnRecord]]) -> None:
        """Turns left by a drain deadline or a crash (`leftover`, taken before this generation
        accepted anything): run each once more, or tell the requester it was lost to a restart
        when it has been resumed already (SPEC 6)."""
        try:
            await resume_each(
                gen.runtime,
                leftover,
                accepting=lambda: self.current is gen and self.state.value == "running",
                start=partial(self._start_turn, gen),
            )
        finally:
            self.busy.value -= 1

    # --- cluster mode: sessions moving between nodes ---------------------------------------

    async def adopt_sessions(self, records: list[SessionRecord]) -> None:
        """Sessions a peer left (it stopped or died) with turns pending, now owned here: their
        turns resume through the same path as after a restart, at once when running (queued
        before this returns: a turn accepted next runs after them), else in the next generation."""
        leftover = self.table.adopt(records)
        gen = self.current
        if leftover and gen is not None and self.state.value == "running":
            self.busy.value += 1
            await self._resume_turns(gen, leftover)

    async def take_handoffs(self, items: list[HandedOff]) -> None:
        """Turns peers accepted for sessions owned here: run here, in order (`handoff.py`)."""
        if self.cluster is not None and (gen := self.current) is not None and self.state.value == "running":
            await self.cluster.take(items, partial(self._start_turn, gen))

    def forget_session(self, session_id: str) -> None:
        """Another node owns this session now (a write here was refused): `SessionTable.forget`."""
        self.table.forget(session_id)

    # --- operations ----------------------------------------------------------------------

    async def stall_model_call(self, session_id: str | None, seconds: float) -> tuple[str, str]:
        """The test endpoint: a turn whose model call makes no progress for `seconds`. The stall
        is armed for the session before its turn is accepted (the turn may start at once), in
        the generation's memory only (`runtime/stalls.py`)."""
        gen = self._accepting()
        if session_id is not None and session_id in self.sessions:
            record = self.sessions[session_id].record
            agent_id, origin = record.agent, record.origin
        else:
            agent_id, origin = next(iter(gen.config.agents)), Origin("console", "test", None)
            session_id = (
                session_id or self.table.known_id(agent_id, origin) or self.table.new_id(self.generation_number)
            )
        gen.runtime.stalls.arm(session_id, seconds)
        try:
            return await self.submit(
                agent_id=agent_id, origin=origin, prompt="(stalled model call)", session_id=session_id
            )
        except BaseException:
            gen.runtime.stalls.disarm(session_id)
            raise

    def abort_session(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        if session is None and self.table.evicted(session_id):
            return False  # idle, out of memory: nothing to abort
        if session is None:
            raise NotFoundError(f"no session {session_id!r}")
        was_busy = session.abort()
        self.log.warn("SESSION", "Session aborted by operator", sessionId=session_id, wasBusy=was_busy)
        return was_busy

    # --- observation ---------------------------------------------------------------------

    def _now(self) -> dt.datetime:
        assert self.wall is not None
        return self.wall.now()

    def _counts(self) -> DrainCounts:
        now = trio.current_time()
        units = [u for u in self.registry.units() if u.kind not in ("embedded_run", "delivery_attempt")]
        embedded = sum(1 for u in self.registry.units() if u.kind == "embedded_run")
        blockers = tuple(sorted(units, key=lambda u: -u.idle_for(now)))
        return DrainCounts(self.busy.value, embedded, blockers)
