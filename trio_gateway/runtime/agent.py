"""Sessions, turns and subagents: the agent loop and the task tree it runs in.

A session owns a nursery that lives while the session has work: its turns (one at a time, in
arrival order) and the subagents they spawn. Every model call and tool call is one unit in
the work registry, in its own cancel scope. A subagent runs in the session's nursery, carries
its requester's origin unchanged, and as it leaves that nursery, however it leaves (done,
failed, aborted, cancelled by a drain), exactly one notice is handed to the outbox.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Literal, Protocol

import attrs
import trio

from trio_gateway.delivery.typing import TypingIndicators
from trio_gateway.errors import (
    ConfigError,
    DeliveryValidationError,
    GatewayError,
    ModelCallError,
    described,
    only_gateway_error,
)
from trio_gateway.log import EventLog
from trio_gateway.models.base import Message, Model, ModelReply, ToolCall
from trio_gateway.policy.config import Config
from trio_gateway.policy.entry import DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import SessionStorage
from trio_gateway.storage.sessions import SessionRecord, TurnRecord
from trio_gateway.tools.registry import ToolBox
from trio_gateway.work.units import WorkRegistry, WorkUnit


class Outbox(Protocol):
    async def submit(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> object: ...


# How long a turn waits for a session save it can do without (the disk keeps an older copy).
SAVE_WAIT_SECONDS = 10.0

SPAWN_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "spawn_subagent",
        "description": "Start a subagent on a task; returns its id at once. Its result is delivered to the requester.",
        "parameters": {
            "type": "object",
            "properties": {"agent": {"type": "string"}, "task": {"type": "string"}},
            "required": ["task"],
        },
    },
}


@attrs.define
class Runtime:
    """What a turn needs from its generation. Built once per generation, so a restart that
    reloads the config hands new turns the new models and rules."""

    config: Config
    models: Mapping[str, Model]
    registry: WorkRegistry
    outbox: Outbox
    store: SessionStorage
    log: EventLog
    wall: Callable[[], dt.datetime]
    # MCP servers and http_request (SPEC 14); None: only spawn_subagent.
    tools: ToolBox | None = None
    # The typing indicator shown while a turn runs (SPEC 15); None: none is shown.
    typing: TypingIndicators | None = None

    def typing_in(self, origin: Origin | None) -> AbstractAsyncContextManager[None]:
        return self.typing.during(origin) if self.typing is not None else contextlib.nullcontext()

    @property
    def cleanup_timeout(self) -> float:
        return self.config.gateway.drain.cleanup_timeout_seconds


@attrs.frozen
class TurnOutcome:
    """How a turn ended, once its reply or failure notice is durably enqueued."""

    ok: bool
    text: str


# Outcomes kept per session for `session start --wait`: a waiter arrives within seconds.
MAX_OUTCOMES = 32


@attrs.define(eq=False)
class Subagent:
    id: str
    agent: str
    depth: int
    task: str
    state: str = "running"


@attrs.define(eq=False)
class SessionInbox:
    """How work joins a busy session's task: its later turns and its subagents, started in the
    nursery that task owns. The nursery itself never leaves that task.

    The task closes the inbox in the same step (no checkpoint between) as it finds nothing
    left running, before it leaves its `async with`; so while the inbox is open the nursery is
    open, and a turn handed in is either started there or refused (`False`: the caller starts
    a new session task) — never lost to a nursery that is closing."""

    _nursery: trio.Nursery
    closed: bool = False
    _running: int = 0
    _idle: trio.Event = attrs.Factory(trio.Event)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Start `fn(*args)` in the session's nursery; False once the task takes no more work."""
        if self.closed:
            return False
        self._running += 1
        self._nursery.start_soon(self._run, fn, *args)
        return True

    @property
    def cancelled(self) -> bool:
        """The session's own scope was cancelled (an abort). A drain cancels the work scope
        around every session instead, which this does not see (nor did it before the inbox)."""
        return self._nursery.cancel_scope.cancel_called

    def cancel(self, reason: str) -> None:
        self._nursery.cancel_scope.cancel(reason=reason)

    async def _run(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def close_when_idle(self) -> None:
        """Until nothing runs here, then closed: the last check and the close are one step."""
        while self._running:
            self._idle = trio.Event()
            await self._idle.wait()
        self.closed = True


@attrs.define(eq=False)
class Session:
    record: SessionRecord
    # While the session's task runs (`run_session`): where its later work joins it.
    inbox: SessionInbox | None = None
    lock: trio.Lock = attrs.Factory(trio.Lock)
    waiting: int = 0
    current: TurnRecord | None = None
    subagents: dict[str, Subagent] = attrs.Factory(dict)
    # Turns an operator abort cut off: their requesters are told, and they are not resumed.
    # Kept per turn, not as a session flag, so a turn submitted after the abort is unaffected.
    aborted: set[str] = attrs.Factory(set)
    outcomes: dict[str, TurnOutcome] = attrs.Factory(dict)
    # Set (and replaced) each time a turn ends: what a waiter for an outcome sleeps on.
    ended: trio.Event = attrs.Factory(trio.Event)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def busy(self) -> bool:
        return self.inbox is not None

    def next_id(self, prefix: str) -> str:
        # Counted in the record, which is saved with every accepted turn: a turn id is never
        # reused after a restart, and it is the reply's idempotency key (channels dedupe by it).
        self.record.seq += 1
        return f"{prefix}-{self.id}-{self.record.seq}"

    def finish(self, turn_id: str, *, ok: bool, text: str) -> None:
        self.outcomes[turn_id] = TurnOutcome(ok, text)
        while len(self.outcomes) > MAX_OUTCOMES:
            del self.outcomes[next(iter(self.outcomes))]
        self.ended.set()
        self.ended = trio.Event()

    def abort(self) -> bool:
        """Cancel all of this session's work (operator's `session abort`)."""
        if self.inbox is None:
            return False
        self.aborted.update(t.id for t in self.record.turns)
        self.inbox.cancel("session aborted by the operator")
        return True


# --- the session task -----------------------------------------------------------------------


async def run_session(rt: Runtime, session: Session, turn: TurnRecord, *, task_status: Any) -> None:
    """The session's task in the generation's work nursery. Ends when the session has no turn
    queued and no subagent running; `queue_turn` adds turns while it lives. The first turn runs
    in this task itself: one task per busy session, not two, halves what a drain must cancel."""
    await serve_session(session, partial(_run_turn, rt, session, turn), task_status=task_status)


async def serve_session(session: Session, first: Callable[[], Awaitable[None]], *, task_status: Any) -> None:
    """Own the session's nursery: run `first`, then whatever joins through the inbox, until
    nothing is left; the inbox closes before the nursery does."""
    inbox: SessionInbox | None = None
    try:
        async with trio.open_nursery() as nursery:
            inbox = session.inbox = SessionInbox(nursery)
            task_status.started()
            try:
                await first()
                await inbox.close_when_idle()
            finally:
                inbox.closed = True  # cancelled or failed: refuse work while the nursery unwinds
    finally:
        # A newer session task may already own the session (started once this one closed):
        # only clear what is still ours.
        if inbox is not None and session.inbox is inbox:
            session.inbox = None


def queue_turn(session: Session, rt: Runtime, turn: TurnRecord) -> bool:
    """Add a turn to a session whose task is alive; False when the caller must start one
    (no task, or a task that is closing or that an abort or a drain is unwinding)."""
    inbox = session.inbox
    # A cancelled session task would cut the turn at once: a new task runs it instead.
    return inbox is not None and not inbox.cancelled and inbox.start_soon(_run_turn, rt, session, turn)


async def _run_turn(rt: Runtime, session: Session, turn: TurnRecord) -> None:
    session.waiting += 1
    try:
        await session.lock.acquire()
    except trio.Cancelled:
        # Cut while queued behind another turn: the same rules as a running turn.
        session.waiting -= 1
        await _cut(rt, session, turn)
        raise
    session.waiting -= 1
    session.current = turn
    try:
        await _run_turn_locked(rt, session, turn)
    except trio.Cancelled:
        raise
    except Exception as exc:  # a bug in one turn must not take the gateway down
        rt.log.error("TURN", "Turn failed unexpectedly", sessionId=session.id, turnId=turn.id, error=repr(exc))
        await drop_turn(rt, session, turn, "Sorry, this request failed with an internal error.")
    finally:
        session.current = None
        session.lock.release()


async def _run_turn_locked(rt: Runtime, session: Session, turn: TurnRecord) -> None:
    record = session.record
    turn.status = "running"
    await _save_best_effort(rt, record)
    agent = rt.config.agents.get(record.agent)
    messages = _initial_messages(agent.system_prompt if agent else "", record.history, turn.prompt)
    kind: DeliveryKind = "cron_result" if turn.kind == "cron" else "reply"
    ok = True
    try:
        async with rt.typing_in(turn.origin):
            text = await _agent_loop(
                rt, session, record.agent, messages, turn.origin, depth=0, stall=turn.stall_seconds
            )
    except trio.Cancelled:
        await _cut(rt, session, turn)
        raise
    except Exception as exc:
        error = _gateway_error(exc)
        if error is None:
            raise  # a bug: _run_turn logs it
        kind, text, ok = "reply", f"Sorry, this request failed: {error}", False
        rt.log.warn("TURN", "Turn ended with a failure", sessionId=session.id, turnId=turn.id, error=described(error))
    record.remember([{"role": "user", "content": turn.prompt}, {"role": "assistant", "content": text}])
    turn.reply, turn.reply_kind = text, kind
    await finish_turn(rt, session, turn, ok=ok)


async def finish_turn(rt: Runtime, session: Session, turn: TurnRecord, *, ok: bool = True) -> None:
    """Hand the turn's reply to the outbox, then forget the turn. Deliver first: a crash in
    between re-runs it (a duplicate the channel dedupes by the turn's id) rather than losing
    it. A reply the outbox could not take keeps the turn, reply and all, for the next
    generation: accepted work is never dropped because its reply could not be enqueued. `ok`
    is the outcome a waiting requester is told (`Session.finish`); a reply kept across a
    restart does not record it and counts as ok."""
    assert turn.reply is not None
    kind = turn.reply_kind or "reply"
    outcome = await _deliver(
        rt, kind=kind, origin=turn.origin, agent_id=session.record.agent, text=turn.reply, key=turn.id
    )
    if outcome == "failed":
        turn.status = "interrupted"
        return
    session.finish(turn.id, ok=ok, text=turn.reply)
    if turn in session.record.turns:
        session.record.turns.remove(turn)
    await _save_best_effort(rt, session.record)


async def _save_best_effort(rt: Runtime, record: SessionRecord) -> None:
    """Save a session whose turn is already accepted. A failure (full disk) is logged, not
    raised: the file on disk is older, which is safe (it still lists the turn, so a crash
    re-runs it), and the turn must not be dropped over it."""
    with trio.move_on_after(SAVE_WAIT_SECONDS) as bound:
        try:
            await rt.store.save(record)
        except Exception as exc:
            rt.log.error(
                "SESSIONS", "Session not saved; the older copy on disk stands", sessionId=record.id, error=repr(exc)
            )
    if bound.cancelled_caught:  # a hung sessions disk: the turn goes on, the write is abandoned
        rt.log.error(
            "SESSIONS", "Session save did not finish in time; the older copy on disk stands", sessionId=record.id
        )


async def _cut(rt: Runtime, session: Session, turn: TurnRecord) -> None:
    """A cancellation reached this turn (drain deadline, operator abort). Called with the
    `Cancelled` in flight; the caller re-raises it."""
    if _kept_for_resume(rt, session, turn):
        return
    why = "aborted by the operator" if turn.id in session.aborted else "interrupted by a gateway restart"
    session.aborted.discard(turn.id)
    with trio.move_on_after(rt.cleanup_timeout, shield=True) as bound:
        await drop_turn(rt, session, turn, f"Sorry, this request was {why}.")
    if bound.cancelled_caught:
        rt.log.error("TURN", "Requester not told within the cleanup bound", sessionId=session.id, turnId=turn.id)


async def drop_turn(rt: Runtime, session: Session, turn: TurnRecord, text: str) -> None:
    """Forget a turn that will not run (again), telling its requester first. A notice the
    outbox cannot take keeps the turn as owing that notice (`finish_turn`)."""
    rt.log.warn("TURN", "Turn dropped", sessionId=session.id, turnId=turn.id, notice=text)
    turn.reply, turn.reply_kind = text, "reply"
    await finish_turn(rt, session, turn, ok=False)


def _kept_for_resume(rt: Runtime, session: Session, turn: TurnRecord) -> bool:
    """A drain deadline cut this turn off: keep it for the next generation (SPEC 6), and say
    so. Memory is enough: the next generation reads this record, and on disk the turn is still
    `running`, which a new process treats as interrupted too. No I/O, no await, no shielded
    scope: at 10,000 cut turns, each of those was measurable in the restart time."""
    if turn.id in session.aborted or not rt.config.gateway.drain.resume_interrupted:
        return False
    turn.status = "interrupted"
    # DEBUG: the drain logs its own summary, and thousands of lines would slow the cut itself.
    rt.log.debug("TURN", "Turn interrupted; kept for the next generation", sessionId=session.id, turnId=turn.id)
    return True


def _gateway_error(exc: BaseException) -> GatewayError | None:
    """The gateway error behind `exc`, also when a nursery inside a model client wrapped it
    in an exception group (several: the first answers, naming the others in its notes); None
    when it is anything else (a bug)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return only_gateway_error(exc)
    return None


def _subagent_failure(rt: Runtime, session: Session, sub: Subagent, exc: Exception) -> str:
    error = _gateway_error(exc)
    if error is not None:
        return f"Subagent {sub.id} failed: {error}"
    # A bug: still tell the requester, never silence; the log keeps the detail.
    rt.log.error("SUBAGENT", "Subagent crashed", sessionId=session.id, subagentId=sub.id, error=repr(exc))
    return f"Subagent {sub.id} failed: internal error {type(exc).__name__}"


def _initial_messages(system_prompt: str, history: list[Message], prompt: str) -> list[Message]:
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(history)
    messages.append({"role": "user", "content": prompt})
    return messages


DeliverOutcome = Literal["enqueued", "no_route", "failed"]


async def _deliver(
    rt: Runtime, *, kind: DeliveryKind, origin: Origin | None, agent_id: str, text: str, key: str | None
) -> DeliverOutcome:
    """Hand a notice to the outbox. Never raises (but `Cancelled`): a notice that cannot be
    enqueued is logged loudly with its text, and the caller decides what to keep. (The queue's
    outbox itself retries a full disk until cancelled; `failed` is what any other error or
    outbox gives.)"""
    try:
        await rt.outbox.submit(kind=kind, origin=origin, agent_id=agent_id, text=text, idempotency_key=key)
    except DeliveryValidationError as exc:
        # The origin itself is unusable (validated at intake, so this means a stale session or
        # a removed agent): there is nowhere correct to send it.
        rt.log.error("DELIVERY", "Notice not enqueued: no valid route", kind=kind, error=str(exc), text=text[:200])
        return "no_route"
    except Exception as exc:  # disk full, I/O error: say so, keep going
        rt.log.error("DELIVERY", "Notice not enqueued", kind=kind, error=repr(exc), text=text[:200])
        return "failed"
    return "enqueued"


# --- the agent loop -------------------------------------------------------------------------


async def _agent_loop(
    rt: Runtime,
    session: Session,
    agent_id: str,
    messages: list[Message],
    origin: Origin | None,
    *,
    depth: int,
    parent: WorkUnit | None = None,
    stall: float | None = None,
) -> str:
    """Model, tools, model ... until the model answers with text. Raises `WorkAbortedError`
    when stall recovery cancels one of its units, `ModelCallError` on upstream errors."""
    agent = rt.config.agents.get(agent_id)
    if agent is None:
        raise ConfigError(f"agents.{agent_id}", "no longer configured (removed by a config reload?)")
    model = rt.models[agent.model]
    tools = [SPAWN_TOOL] if depth < agent.max_subagent_depth else []
    if rt.tools is not None:
        await rt.tools.listed(agent_id)  # a server still starting: wait for its tool listing
        tools += rt.tools.offered(agent_id)
    for _ in range(agent.max_tool_rounds):
        reply = await _model_call(rt, session, model, messages, tools, parent, stall)
        stall = None
        messages.append(reply.as_message())
        if not reply.tool_calls:
            return reply.text or ""
        for call in reply.tool_calls:
            result = await _tool_call(rt, session, call, agent_id, origin, depth, parent)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise ModelCallError(f"no answer after {agent.max_tool_rounds} tool rounds")


async def _model_call(
    rt: Runtime,
    session: Session,
    model: Model,
    messages: list[Message],
    tools: list[dict[str, Any]],
    parent: WorkUnit | None,
    stall: float | None,
) -> ModelReply:
    with rt.registry.track("model_call", session.id, parent) as unit:
        if stall is not None:
            # The test endpoint's injected stall: the call is in flight and makes no progress,
            # exactly what a silent upstream looks like to the watchdog and the drain.
            await trio.sleep(stall)
        return await model.complete(messages, tools, unit.progress)
    raise AssertionError("unreachable: track() re-raises when it absorbs a cancellation")


async def _tool_call(
    rt: Runtime,
    session: Session,
    call: ToolCall,
    agent_id: str,
    origin: Origin | None,
    depth: int,
    parent: WorkUnit | None,
) -> str:
    if rt.tools is not None and rt.tools.handles(call.name):
        # Its own unit (tool_call or api_request); an abort comes back as a tool error.
        return await rt.tools.call(session.id, parent, agent_id, call)
    with rt.registry.track("tool_call", session.id, parent) as unit:
        unit.progress(f"tool_call:{call.name}")
        if call.name == "spawn_subagent":
            return spawn_subagent(rt, session, call.arguments, agent_id, origin, depth + 1)
        return json.dumps({"error": f"unknown tool {call.name!r}"})
    raise AssertionError("unreachable: track() re-raises when it absorbs a cancellation")


# --- subagents ------------------------------------------------------------------------------


def spawn_subagent(
    rt: Runtime, session: Session, args: Mapping[str, Any], parent_agent: str, origin: Origin | None, depth: int
) -> str:
    agent_id = args.get("agent") or parent_agent
    task = args.get("task")
    if not isinstance(agent_id, str) or agent_id not in rt.config.agents:
        return json.dumps({"error": f"no agent named {agent_id!r}"})
    if not isinstance(task, str) or not task:
        return json.dumps({"error": "task must be a non-empty string"})
    sub = Subagent(session.next_id("sub"), agent_id, depth, task)
    if session.inbox is None or not session.inbox.start_soon(_run_subagent, rt, session, sub, origin):
        return json.dumps({"error": "session is not running"})
    session.subagents[sub.id] = sub
    rt.log.info("SUBAGENT", "Subagent spawned", sessionId=session.id, subagentId=sub.id, agent=agent_id, depth=depth)
    return json.dumps({"subagentId": sub.id})


async def _run_subagent(rt: Runtime, session: Session, sub: Subagent, origin: Origin | None) -> None:
    """One subagent run. The `finally` is the point where it leaves the session's nursery:
    the notice is routed from the origin it carried and enqueued there, shielded and bounded,
    whether it finished, failed, was aborted or was cancelled by a drain."""
    kind: DeliveryKind = "subagent_failure"
    text = f"Subagent {sub.id} was cancelled before it finished."
    try:
        with rt.registry.track("embedded_run", session.id) as unit:
            unit.progress("embedded_run:started")
            messages: list[Message] = [{"role": "user", "content": sub.task}]
            result = await _agent_loop(rt, session, sub.agent, messages, origin, depth=sub.depth, parent=unit)
        kind, text = "subagent_completion", f"Subagent {sub.id} finished: {result}"
        sub.state = "completed"
    except Exception as exc:
        text, sub.state = _subagent_failure(rt, session, sub, exc), "failed"
    finally:
        if sub.state == "running":
            sub.state = "cancelled"
        with trio.move_on_after(rt.cleanup_timeout, shield=True) as bound:
            await _deliver(rt, kind=kind, origin=origin, agent_id=sub.agent, text=text, key=sub.id)
        if bound.cancelled_caught:
            rt.log.error("SUBAGENT", "Notice not enqueued within the cleanup bound", subagentId=sub.id, text=text[:200])
        session.subagents.pop(sub.id, None)
        rt.log.info("SUBAGENT", "Subagent ended", sessionId=session.id, subagentId=sub.id, state=sub.state)
