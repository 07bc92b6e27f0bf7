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
import itertools
import os
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack
from typing import Any, Literal, Protocol

import attrs
import trio
from trio_util import AsyncValue

from trio_gateway.channels.listen import ListenerSupervisor
from trio_gateway.channels.registry import load_config as load_config_file
from trio_gateway.delivery.typing import TypingIndicators
from trio_gateway.errors import (
    BadRequestError,
    ConfigError,
    GatewayDrainingError,
    InsufficientStorageError,
    NotFoundError,
    SessionElsewhereError,
)
from trio_gateway.log import EventLog, ms
from trio_gateway.models.base import Model
from trio_gateway.policy.config import Config, ModelConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime import agent, session_evict
from trio_gateway.runtime.cron import run_cron
from trio_gateway.runtime.session_evict import Evicted
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.base import DeliveryStore, SessionStorage
from trio_gateway.storage.disk import StorageHealth, is_no_space
from trio_gateway.storage.home import Home
from trio_gateway.storage.sessions import SESSION_ID, SessionRecord, SessionStore, TurnKind, TurnRecord
from trio_gateway.tools.registry import ToolBox, build_toolbox, production_openers
from trio_gateway.tools.registry import preload as preload_tools
from trio_gateway.work.clock import WallClock
from trio_gateway.work.drain import DrainCounts, DrainKind, DrainReport, DrainRequest, collector_paused, drain
from trio_gateway.work.stall import StallWatchdog
from trio_gateway.work.units import WorkRegistry

# How long intake waits for the write that accepts a turn before answering 507.
_DISK_WAIT_SECONDS = 10.0

State = Literal["starting", "running", "draining", "stopped"]


class ServiceOutbox(agent.Outbox, Protocol):
    """A generation's outbox: turns' notices (routed), and an operator's deliveries."""

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        """`delivery create` and `POST /v1/deliveries`: an explicit address, no routing."""
        ...


class DeliveryService(Protocol):
    """The delivery side of one generation: the outbox turns hand notices to, the worker, and
    the queue both use (what `GET /v1/deliveries` lists)."""

    @property
    def outbox(self) -> ServiceOutbox: ...

    @property
    def store(self) -> DeliveryStore: ...

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...

    def counts(self) -> dict[str, int]: ...

    async def aclose(self) -> None: ...


DeliveryFactory = Callable[[Config, "Gateway"], Awaitable[DeliveryService]]
# The listeners of one generation (SPEC 11), given its delivery side (an auth failure pauses
# the account's sender too).
ListenerFactory = Callable[[Config, "Gateway", DeliveryService], Awaitable[ListenerSupervisor]]
ToolsFactory = Callable[[Config, "Gateway"], ToolBox]
ModelFactory = Callable[[ModelConfig], Model]
Server = Callable[..., Awaitable[None]]


@attrs.define
class GatewayDeps:
    """Everything the gateway gets from outside, so tests and scenarios swap fakes in."""

    home: Home
    log: EventLog
    load_config: Callable[[], Config]
    model_factory: ModelFactory
    delivery_factory: DeliveryFactory
    # Checks a config against the environment (secrets present) without opening anything;
    # raises ConfigError. Run on every reload before the running config is let go.
    preflight: Callable[[Config], None] = lambda _config: None
    runner: BlockingRunner = in_thread
    wall_base: dt.datetime | None = None
    servers: list[Server] = attrs.Factory(list)
    # Session writes; None: `runner`. Production abandons a cancelled write's thread.
    session_runner: BlockingRunner | None = None
    # None: nothing listens (the in-process kit without channel fakes).
    listener_factory: ListenerFactory | None = None
    # Where state lives, for `gateway status` (cluster mode adds the node id).
    describe_storage: Callable[[], dict[str, Any]] = lambda: {"backend": "files"}
    # Cluster mode: sessions in the database (None: files under the home), and new session ids
    # that cannot collide with another node's.
    session_store: Callable[[Gateway], SessionStorage] | None = None
    session_id_prefix: str = "s"
    # `GET /v1/cluster`: the nodes sharing the database (None: not in cluster mode).
    cluster_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # MCP servers and http_request per generation (SPEC 14); None: real processes and HTTP.
    tools_factory: ToolsFactory | None = None


@attrs.define(eq=False)
class Generation:
    number: int
    config: Config
    runtime: agent.Runtime
    work: trio.Nursery


@attrs.define(eq=False)
class Gateway:
    deps: GatewayDeps
    config: Config
    state: AsyncValue[State] = attrs.Factory(lambda: AsyncValue("starting"))
    generation_number: int = 0
    current: Generation | None = None
    sessions: dict[str, agent.Session] = attrs.Factory(dict)
    busy: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    registry: WorkRegistry = attrs.field(init=False)
    store: SessionStorage = attrs.field(init=False)
    drains: list[DrainReport] = attrs.Factory(list)
    started_at: float = 0.0
    wall: WallClock | None = None
    delivery: DeliveryService | None = None
    watchdog: StallWatchdog | None = None
    # Disks refusing writes right now: intake answers 507 while accepted work waits.
    storage: StorageHealth = attrs.Factory(StorageHealth)
    listeners: ListenerSupervisor | None = None
    tools: ToolBox | None = None
    tool_outcomes: Counter[tuple[str, str]] = attrs.Factory(Counter)
    _drain: DrainRequest | None = None
    _drain_wanted: trio.Event = attrs.Factory(trio.Event)
    _by_origin: dict[tuple[str, Origin | None], str] = attrs.Factory(dict)
    # Idle sessions out of memory (session_evict.py), and when each was last given a turn.
    _evicted: dict[str, Evicted] = attrs.Factory(dict)
    _last_active: dict[str, float] = attrs.Factory(dict)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        self.registry = WorkRegistry(self.deps.log)
        runner = self.deps.session_runner or self.deps.runner
        make_store = self.deps.session_store
        self.store = (
            make_store(self) if make_store else SessionStore(self.deps.home.sessions_dir, runner, self.deps.log)
        )

    @property
    def log(self) -> EventLog:
        return self.deps.log

    # --- lifecycle -----------------------------------------------------------------------

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> DrainReport:
        """Run until stopped. `task_status.started()` fires when generation 1 accepts work."""
        self.started_at = trio.current_time()
        self.wall = WallClock.start(self.deps.wall_base)
        for record in await self.store.load_all():
            self.sessions[record.id] = agent.Session(record)
            self._by_origin[(record.agent, _conversation(record.origin))] = record.id
            self._last_active[record.id] = self.started_at
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
                self.config = self._reload(self.config, request)
                completed = request
            self.state.value = "stopped"
            request.done.set()
            root.cancel_scope.cancel()
        assert request.report is not None
        return request.report

    def _reload(self, old: Config, request: DrainRequest) -> Config:
        """A restart reloads `gateway.json`; a bad file keeps the running config (a restart
        must never leave the operator with no gateway), and the restart's report says so."""
        try:
            config = self.deps.load_config()
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
            resources.push_async_callback(self._close_bounded, delivery.aclose, config)
            self.delivery = delivery
            assert self.wall is not None
            await preload_tools(config)
            tools = self._build_tools(config)
            tools.inherit(self.tools)
            tools.outcomes = self.tool_outcomes  # a counter for /metrics: it never goes back
            self.tools = tools
            resources.push_async_callback(self._close_bounded, tools.aclose, config)
            rt = agent.Runtime(
                config, models, self.registry, delivery.outbox, self.store, self.log, self.wall.now, tools
            )
            rt.typing = self._typing_for(delivery)
            self.watchdog = StallWatchdog(
                self.registry, config.gateway.stalled_task_detection, self.log, self.queue_depth
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
                services.start_soon(self._evict_idle_sessions, config.gateway.session_evict_after_seconds)
                # MCP servers live until the work is gone (a call in flight may still finish
                # during the drain's wait), then stop with the services, each stop bounded.
                services.start_soon(tools.run)
                cut = ExitStack()
                with cut, trio.CancelScope() as work_scope:
                    async with trio.open_nursery() as work:
                        self.current = Generation(number, config, rt, work)
                        leftover = [(s, t) for s in self.sessions.values() for t in s.record.turns]
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
                        if rt.typing is not None:
                            rt.typing.stop()  # already at the request; here for a drain asked while starting
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
        self.listeners = None if factory is None else await factory(config, self, delivery)
        return self.listeners

    def _build_tools(self, config: Config) -> ToolBox:
        if self.deps.tools_factory is not None:
            return self.deps.tools_factory(config, self)
        openers = production_openers(os.environ, str(self.deps.home.logs_dir))
        return build_toolbox(config, self.registry, self.log, openers)

    async def _open_models(self, config: Config, resources: AsyncExitStack) -> dict[str, Model]:
        models = {}
        for name, model_config in config.models.items():
            model = self.deps.model_factory(model_config)
            resources.push_async_callback(self._close_bounded, model.aclose, config)
            models[name] = model
        return models

    @staticmethod
    async def _close_bounded(close: Callable[[], Awaitable[None]], config: Config) -> None:
        # Closing clients must not hang a restart either: bounded, and shielded because it
        # runs while the generation may be cancelled.
        with trio.move_on_after(config.gateway.channel_stop_timeout_seconds, shield=True):
            await close()

    async def _run_cron(self, scope: trio.CancelScope, config: Config) -> None:
        """Cron stops the moment a drain starts: a scheduled run is not owed to anyone."""
        with scope:
            await run_cron(config.cron, self, self.log)

    def _finish_drain(self, request: DrainRequest, timed_out: bool, left: DrainCounts) -> None:
        now = trio.current_time()
        took = now - request.requested_at
        cut = left.blockers if timed_out else ()
        aborted = tuple(f"{u.kind} session={u.session_id or '-'}" for u in cut)
        for unit in cut:
            # Drain aborts count with stall aborts (metrics), without a log line each.
            self.registry.count_abort(unit.kind)
        request.report = DrainReport(
            kind=request.kind,
            forced=request.force,
            timed_out=timed_out,
            timeout_seconds=request.timeout_seconds,
            started_at=request.requested_at,
            waited_seconds=took,
            aborted_tasks=left.tasks if timed_out else 0,
            aborted_work=aborted,
        )
        self.drains.append(request.report)
        if not timed_out:
            self.log.info("DRAINING", "All tasks cleared; proceeding with shutdown")
        self.log.info("SHUTDOWN", f"Shutdown completed cleanly in {ms(took)}", generation=self.generation_number)

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
        if self.current is not None and self.current.runtime.typing is not None:
            self.current.runtime.typing.stop()  # typing indicators too (SPEC 15), though turns run on
        self._drain_wanted.set()
        return self._drain

    def _typing_for(self, delivery: DeliveryService) -> TypingIndicators | None:
        """Typing indicators through the generation's channel adapters, when its delivery side
        has them (the queue's and the cluster's do; a recording stand-in does not)."""
        channels = getattr(delivery, "channels", None)
        return TypingIndicators(channels.get, self.log) if channels is not None else None

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
        stall_seconds: float | None = None,
    ) -> tuple[str, str]:
        """Accept one turn: written to `sessions/` before this returns, then started.
        Returns (session id, turn id). Raises `GatewayDrainingError` while draining."""
        accepted = await self._accept(agent_id, origin, prompt, kind, session_id, stall_seconds, None)
        assert accepted is not None
        return accepted

    async def submit_inbound(
        self, *, agent_id: str, origin: Origin, prompt: str, inbound_id: str
    ) -> tuple[str, str] | None:
        """A message a channel heard (SPEC 11): (session id, turn id) when it became a new
        durable turn, None when this conversation already had a message with that platform id
        (a re-read after a crash, a webhook retry). The id is written in the same atomic write
        as the turn."""
        return await self._accept(agent_id, origin, prompt, "inbound", None, None, inbound_id)

    async def _accept(
        self,
        agent_id: str,
        origin: Origin | None,
        prompt: str,
        kind: TurnKind,
        session_id: str | None,
        stall_seconds: float | None,
        inbound_id: str | None,
    ) -> tuple[str, str] | None:
        gen = self._accepting()
        if agent_id not in gen.config.agents:
            raise BadRequestError(f"agent: no agent named {agent_id!r}")
        self.storage.check()  # a full disk refuses new work (507); accepted work is retried
        await self._restore_evicted(session_id or self._by_origin.get((agent_id, _conversation(origin))))
        session, created = self._session_for(agent_id, origin, session_id)
        if inbound_id is not None and session.record.heard(inbound_id):
            return None
        turn = TurnRecord(
            session.next_id("turn"), prompt, origin, kind, accepted_at=self._now(), stall_seconds=stall_seconds
        )
        session.record.turns.append(turn)
        if inbound_id is not None:
            session.record.remember_inbound(inbound_id)
        try:
            await self._save_accepted(session)
        except BaseException:
            self._forget_unsaved(session, turn, created, inbound_id)
            raise
        if self.sessions.get(session.id) is not session:
            # Cluster mode: the write was refused, another node owns the session (forgotten
            # here meanwhile); the caller retries and gets a session of its own.
            raise SessionElsewhereError(f"session {session.id} is owned by another node; try again")
        self._last_active[session.id] = trio.current_time()
        # Saving yields: a drain may have begun meanwhile. The turn is on disk as accepted,
        # so the next generation runs it; starting it now would only lengthen this drain.
        if self.state.value == "running" and self.current is gen:
            await self._start_turn(gen, session, turn)
        return session.id, turn.id

    async def _save_accepted(self, session: agent.Session) -> None:
        """The write that makes a turn accepted, bounded: a full or stuck sessions disk
        refuses the turn with 507 (the caller forgets the turn: it was never accepted)."""
        try:
            with trio.fail_after(_DISK_WAIT_SECONDS):
                await self.store.save(session.record)
        except trio.TooSlowError:
            raise InsufficientStorageError(f"the sessions disk did not answer within {_DISK_WAIT_SECONDS:g}s") from None
        except OSError as exc:
            if is_no_space(exc):
                raise InsufficientStorageError(f"the sessions disk is full: {exc}") from None
            raise

    async def _restore_evicted(self, session_id: str | None) -> None:
        """Read an evicted session back before a turn joins it, so its history is intact."""
        kept = self._evicted.get(session_id) if session_id is not None else None
        if session_id is None or kept is None:
            return
        record = await self.store.load(session_id)
        if session_id not in self._evicted:
            return  # restored by a concurrent submit meanwhile
        del self._evicted[session_id]
        if record is None:  # its file is gone: the next turn starts a new session
            self._by_origin = {k: v for k, v in self._by_origin.items() if v != session_id}
            return
        record.seq = max(record.seq, kept.seq)  # the disk may hold an older copy (a failed save)
        self.sessions[session_id] = agent.Session(record)
        self._last_active[session_id] = trio.current_time()

    async def _evict_idle_sessions(self, idle_seconds: float) -> None:
        """Runs in the services nursery: every so often, idle sessions leave memory."""
        while True:
            await trio.sleep(session_evict.sweep_interval(idle_seconds))
            now = trio.current_time()
            for session in list(self.sessions.values()):
                last = self._last_active.get(session.id, self.started_at)
                if session_evict.evictable(session, last, now, idle_seconds):
                    del self.sessions[session.id]
                    self._last_active.pop(session.id, None)
                    self._evicted[session.id] = Evicted(session.record.seq)

    def _forget_unsaved(
        self, session: agent.Session, turn: TurnRecord, created: bool, inbound_id: str | None = None
    ) -> None:
        """A turn whose save failed was never accepted: leave no trace of it in memory, or every
        later save of its session (and the next restart's resume) fails on it again."""
        if turn in session.record.turns:
            session.record.turns.remove(turn)
        if inbound_id is not None and inbound_id in session.record.inbound_ids:
            # Not accepted, so not heard: the platform's next delivery of it must be a turn.
            session.record.inbound_ids.remove(inbound_id)
        if created and not session.record.turns and not session.record.history and not session.busy:
            self.sessions.pop(session.id, None)
            key = (session.record.agent, _conversation(session.record.origin))
            if self._by_origin.get(key) == session.id:
                del self._by_origin[key]

    def _accepting(self) -> Generation:
        if self.state.value != "running" or self.current is None:
            raise GatewayDrainingError("the gateway is draining for a restart or stop; try again shortly")
        return self.current

    def _session_for(self, agent_id: str, origin: Origin | None, session_id: str | None) -> tuple[agent.Session, bool]:
        if session_id is not None and not SESSION_ID.fullmatch(session_id):
            # Session ids name files under sessions/: never a path.
            raise BadRequestError(f"sessionId: must match {SESSION_ID.pattern}, got {session_id!r}")
        if session_id is not None:
            if session_id in self.sessions:
                return self.sessions[session_id], False
        else:
            known = self._by_origin.get((agent_id, _conversation(origin)))
            if known is not None and known in self.sessions:
                return self.sessions[known], False
        new_id = session_id or self._new_session_id()
        record = SessionRecord(new_id, agent_id, origin, self._now())
        session = agent.Session(record)
        self.sessions[new_id] = session
        self._by_origin[(agent_id, _conversation(origin))] = new_id
        return session, True

    def _new_session_id(self) -> str:
        # Sessions loaded from disk keep their ids; a new process counts from 1 again, so skip
        # any id already taken rather than overwrite a stored session.
        while True:
            candidate = f"{self.deps.session_id_prefix}-{max(1, self.generation_number)}-{next(self._ids)}"
            if candidate not in self.sessions and candidate not in self._evicted:
                return candidate

    async def _start_turn(self, gen: Generation, session: agent.Session, turn: TurnRecord) -> None:
        if not agent.queue_turn(session, gen.runtime, turn):
            await gen.work.start(self._session_task, gen.runtime, session, turn)

    async def _session_task(
        self, rt: agent.Runtime, session: agent.Session, turn: TurnRecord, *, task_status: Any
    ) -> None:
        self.busy.value += 1
        try:
            await agent.run_session(rt, session, turn, task_status=task_status)
        finally:
            self.busy.value -= 1

    async def _resume_turns(self, gen: Generation, leftover: list[tuple[agent.Session, TurnRecord]]) -> None:
        """Turns left by a drain deadline or a crash (`leftover`, taken before this generation
        accepted anything): run each once more, or tell the requester it was lost to a restart
        when it has been resumed already (SPEC 6)."""
        try:
            await self._resume_each(gen, leftover)
        finally:
            self.busy.value -= 1

    async def _resume_each(self, gen: Generation, leftover: list[tuple[agent.Session, TurnRecord]]) -> None:
        for session, turn in leftover:
            if self.current is not gen or self.state.value != "running":
                return  # a drain began: the rest stay on disk for the next generation
            if turn.reply is not None:
                # Its reply was known but not enqueued (a full queue disk): deliver that,
                # never run the model again for it.
                self.log.info("RESTART", "Delivering the kept reply of a turn", sessionId=session.id, turnId=turn.id)
                await agent.finish_turn(gen.runtime, session, turn)
                continue
            why = self._why_not_resume(gen, session, turn)
            if why is not None:
                await self._give_up_turn(gen, session, turn, why)
                continue
            turn.resumes += 1
            turn.status = "accepted"
            turn.stall_seconds = None
            self.log.info("RESTART", "Resuming interrupted turn", sessionId=session.id, turnId=turn.id)
            # Durable before it runs, so a crash mid-turn cannot resume it forever.
            await self.store.save(session.record)
            await self._start_turn(gen, session, turn)

    @staticmethod
    def _why_not_resume(gen: Generation, session: agent.Session, turn: TurnRecord) -> str | None:
        if session.record.agent not in gen.config.agents:
            return f"agent {session.record.agent!r} is no longer configured"
        if not gen.config.gateway.drain.resume_interrupted:
            return "it was interrupted by a gateway restart"
        if turn.resumes >= 1:
            return "it was interrupted by gateway restarts twice"
        return None

    async def _give_up_turn(self, gen: Generation, session: agent.Session, turn: TurnRecord, why: str) -> None:
        text = f"Sorry, this request was not completed: {why}."
        self.log.warn("RESTART", "Interrupted turn not resumed", sessionId=session.id, turnId=turn.id, why=why)
        # Through the agent's own path: an undeliverable notice is logged, never raised, so a
        # bad leftover turn cannot stop the generation that found it.
        await agent.drop_turn(gen.runtime, session, turn, text)

    # --- cluster mode: sessions moving between nodes ---------------------------------------

    def adopt_sessions(self, records: list[SessionRecord]) -> None:
        """Sessions a peer left (it stopped or died) with turns pending, now owned here: their
        turns resume through the same path as after a restart, at once when running, else in
        the next generation."""
        leftover = []
        for record in records:
            if record.id in self.sessions:
                continue
            session = agent.Session(record)
            self.sessions[record.id] = session
            self._by_origin[(record.agent, _conversation(record.origin))] = record.id
            leftover += [(session, turn) for turn in record.turns]
        gen = self.current
        if leftover and gen is not None and self.state.value == "running":
            self.busy.value += 1
            gen.work.start_soon(self._resume_turns, gen, leftover)

    def forget_session(self, session_id: str) -> None:
        """Another node owns this session now (a write here was refused): stop its work here
        and keep nothing of it; its turns are the owner's."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return
        key = (session.record.agent, _conversation(session.record.origin))
        if self._by_origin.get(key) == session_id:
            del self._by_origin[key]
        if session.inbox is not None:
            session.inbox.cancel(reason="session owned by another node")
        self.log.warn("CLUSTER", "Session owned by another node; its work here is cancelled", sessionId=session_id)

    # --- operations ----------------------------------------------------------------------

    async def stall_model_call(self, session_id: str | None, seconds: float) -> tuple[str, str]:
        """The test endpoint: a turn whose model call makes no progress for `seconds`."""
        if session_id is not None and session_id in self.sessions:
            s = self.sessions[session_id]
            return await self.submit(
                agent_id=s.record.agent, origin=s.record.origin, prompt="(stalled model call)",
                session_id=session_id, stall_seconds=seconds,
            )  # fmt: skip
        gen = self._accepting()
        agent_id = next(iter(gen.config.agents))
        origin = Origin("console", "test", None)
        return await self.submit(
            agent_id=agent_id,
            origin=origin,
            prompt="(stalled model call)",
            session_id=session_id,
            stall_seconds=seconds,
        )

    def abort_session(self, session_id: str) -> bool:
        session = self.sessions.get(session_id)
        if session is None and session_id in self._evicted:
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

    def queue_depth(self, session_id: str | None) -> int:
        """Turns of a session running or waiting (the stall watchdog's and `status`'s figure)."""
        session = self.sessions.get(session_id or "")
        if session is None:
            return 0
        return session.waiting + (1 if session.current is not None else 0)

    def _counts(self) -> DrainCounts:
        now = trio.current_time()
        units = [u for u in self.registry.units() if u.kind not in ("embedded_run", "delivery_attempt")]
        embedded = sum(1 for u in self.registry.units() if u.kind == "embedded_run")
        blockers = tuple(sorted(units, key=lambda u: -u.idle_for(now)))
        return DrainCounts(self.busy.value, embedded, blockers)


def _conversation(origin: Origin | None) -> Origin | None:
    # A WeChat context token changes per message; the conversation is the rest of the origin.
    return None if origin is None else origin.conversation


def load_config_from(home: Home) -> Callable[[], Config]:
    return lambda: load_config_file(home.config_path)
