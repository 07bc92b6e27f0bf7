"""Turns: the agent loop and the session task it runs in.

A busy session's task runs its turns one at a time, in arrival order (`session.py` holds the
session and its inbox). Every model call and tool call is one unit in the work registry, in its
own cancel scope; `spawn_subagent` starts a subagent in the session's nursery (`subagents.py`).
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import trio

from trio_gateway.errors import ConfigError, ModelCallError, TokenCapError, described
from trio_gateway.models.base import Message, ToolCall
from trio_gateway.policy.entry import DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime import model_calls
from trio_gateway.runtime.session import Runtime, Session, deliver, gateway_error, serve_session
from trio_gateway.runtime.subagents import SPAWN_TOOL, spawn_subagent
from trio_gateway.storage.base import SessionDirectory
from trio_gateway.storage.sessions import SessionRecord, TurnRecord
from trio_gateway.work.units import WorkUnit

# How long a turn waits for a session save it can do without (the disk keeps an older copy).
SAVE_WAIT_SECONDS = 10.0

# --- the session task -----------------------------------------------------------------------


async def run_session(rt: Runtime, session: Session, turn: TurnRecord, *, task_status: Any) -> None:
    """The session's task in the generation's work nursery. Ends when the session has no turn
    queued and no subagent running; `queue_turn` adds turns while it lives. The first turn runs
    in this task itself: one task per busy session, not two, halves what a drain must cancel."""
    await serve_session(session, partial(_run_turn, rt, session, turn), task_status=task_status)


def queue_turn(session: Session, rt: Runtime, turn: TurnRecord) -> bool:
    """Add a turn to a session whose task is alive; False when the caller must start one
    (no task, or a task that is closing or that an abort or a drain is unwinding)."""
    # Its place in line now, in this call: the order turns were queued in (`TurnOrder`).
    session.order.join(turn.id)
    inbox = session.inbox
    # A cancelled session task would cut the turn at once: a new task runs it instead.
    return inbox is not None and not inbox.cancelled and inbox.start_soon(_run_turn, rt, session, turn)


async def _run_turn(rt: Runtime, session: Session, turn: TurnRecord) -> None:
    order = session.order  # the line `queue_turn` joined, in this generation
    try:
        if turn.status == "stopped":
            return  # a `/stop` came while its accepting write was under way: it never runs
        session.waiting += 1
        try:
            await order.wait(turn.id)
        except trio.Cancelled:
            # Cut while queued behind another turn: the same rules as a running turn.
            session.waiting -= 1
            await _cut(rt, session, turn)
            raise
        session.waiting -= 1
        await _run_turn_in_order(rt, session, turn)
    finally:
        order.leave(turn.id)


async def _run_turn_in_order(rt: Runtime, session: Session, turn: TurnRecord) -> None:
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


async def _run_turn_locked(rt: Runtime, session: Session, turn: TurnRecord) -> None:
    record = session.record
    turn.status = "running"
    await save_best_effort(rt, record)
    agent = rt.config.agents.get(record.agent)
    messages = _initial_messages(agent.system_prompt if agent else "", record.history, turn.prompt)
    kind: DeliveryKind = "cron_result" if turn.kind == "cron" else "reply"
    ok = True
    try:
        refused = model_calls.over_daily_cap(rt, record.agent)
        if refused is not None:
            raise TokenCapError(refused)
        async with rt.typing_in(turn.origin):
            text = await _agent_loop(rt, session, record.agent, messages, turn.origin, depth=0)
    except trio.Cancelled:
        await _cut(rt, session, turn)
        raise
    except Exception as exc:
        error = gateway_error(exc)
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
    restart does not record it and counts as ok.

    Cluster mode writes the reply into the session first: a node that dies between the enqueue
    and the turn's end would leave the turn to an adopter that runs the model again, or, for a
    turn resumed once already, gives it up with a failure notice after the person had the
    reply. Kept, the adopter delivers the same reply under the same key instead (`resume.py`):
    one row while it is queued, at most a possible duplicate once sent (SPEC 12)."""
    assert turn.reply is not None
    kind = turn.reply_kind or "reply"
    if isinstance(rt.store, SessionDirectory):
        await save_best_effort(rt, session.record)
    outcome = await deliver(
        rt,
        session_id=session.id,
        kind=kind,
        origin=turn.origin,
        agent_id=session.record.agent,
        text=turn.reply,
        key=turn.id,
    )
    if outcome == "failed":
        turn.status = "interrupted"
        return
    if outcome == "lost":
        return  # another node owns the session and ends this turn: nothing here to write
    session.finish(turn.id, ok=ok, text=turn.reply)
    if isinstance(rt.store, SessionDirectory):
        # Cluster mode: written with the save below, for a `wait` asked on another node.
        rt.store.note_outcome(session.id, turn.id, ok, turn.reply)
    if turn in session.record.turns:
        session.record.turns.remove(turn)
    await save_best_effort(rt, session.record)


async def save_best_effort(rt: Runtime, record: SessionRecord) -> None:
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
    if turn.status == "stopped":
        return  # `/stop` (runtime/commands.py): already out of the record, its requester told
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


def _initial_messages(system_prompt: str, history: list[Message], prompt: str) -> list[Message]:
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.extend(history)
    messages.append({"role": "user", "content": prompt})
    return messages


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
) -> str:
    """Model, tools, model ... until the model answers with text. Raises `WorkAbortedError`
    when stall recovery cancels one of its units, `ModelCallError` on upstream errors."""
    agent = rt.config.agents.get(agent_id)
    if agent is None:
        raise ConfigError(f"agents.{agent_id}", "no longer configured (removed by a config reload?)")
    tools = [SPAWN_TOOL] if depth < agent.max_subagent_depth else []
    if rt.tools is not None:
        await rt.tools.listed(agent_id)  # a server still starting: wait for its tool listing
        tools += rt.tools.offered(agent_id)
    for _ in range(agent.max_tool_rounds):
        reply = await model_calls.complete(rt, model_calls.Call(session.id, agent_id, messages, tools, parent))
        messages.append(reply.as_message())
        if not reply.tool_calls:
            return reply.text or ""
        for call in reply.tool_calls:
            result = await _tool_call(rt, session, call, agent_id, origin, depth, parent)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    raise ModelCallError(f"no answer after {agent.max_tool_rounds} tool rounds")


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
            return spawn_subagent(rt, session, call.arguments, agent_id, origin, depth + 1, _agent_loop)
        return json.dumps({"error": f"unknown tool {call.name!r}"})
    raise AssertionError("unreachable: track() re-raises when it absorbs a cancellation")
