"""Subagents: a run a turn spawns in its session's nursery, carrying its requester's origin
unchanged. However it leaves that nursery (done, failed, aborted, cancelled by a drain),
exactly one notice is handed to the outbox.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any, Protocol

import trio

from trio_gateway.models.base import Message
from trio_gateway.policy.entry import DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.session import DeliverOutcome, Runtime, Session, Subagent, deliver, gateway_error
from trio_gateway.storage.sessions import TurnRecord
from trio_gateway.work.units import WorkUnit

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


class AgentLoop(Protocol):
    """The agent loop (`agent.py`), handed in so a subagent runs the same loop as a turn
    (`agent.py` imports this module: importing the loop back would be a cycle)."""

    async def __call__(
        self,
        rt: Runtime,
        session: Session,
        agent_id: str,
        messages: list[Message],
        origin: Origin | None,
        *,
        depth: int,
        parent: WorkUnit | None = None,
    ) -> str: ...


def _failure(rt: Runtime, session: Session, sub: Subagent, exc: Exception) -> str:
    error = gateway_error(exc)
    if error is not None:
        return f"Subagent {sub.id} failed: {error}"
    # A bug: still tell the requester, never silence; the log keeps the detail.
    rt.log.error("SUBAGENT", "Subagent crashed", sessionId=session.id, subagentId=sub.id, error=repr(exc))
    return f"Subagent {sub.id} failed: internal error {type(exc).__name__}"


def spawn_subagent(
    rt: Runtime,
    session: Session,
    args: Mapping[str, Any],
    parent_agent: str,
    origin: Origin | None,
    depth: int,
    loop: AgentLoop,
) -> str:
    agent_id = args.get("agent") or parent_agent
    task = args.get("task")
    if not isinstance(agent_id, str) or agent_id not in rt.config.agents:
        return json.dumps({"error": f"no agent named {agent_id!r}"})
    if not isinstance(task, str) or not task:
        return json.dumps({"error": "task must be a non-empty string"})
    sub = Subagent(session.next_id("sub"), agent_id, depth, task)
    if session.inbox is None or not session.inbox.start_soon(_run_subagent, rt, session, sub, origin, loop):
        return json.dumps({"error": "session is not running"})
    session.subagents[sub.id] = sub
    rt.log.info("SUBAGENT", "Subagent spawned", sessionId=session.id, subagentId=sub.id, agent=agent_id, depth=depth)
    return json.dumps({"subagentId": sub.id})


async def _run_subagent(rt: Runtime, session: Session, sub: Subagent, origin: Origin | None, loop: AgentLoop) -> None:
    """One subagent run. The `finally` is the point where it leaves the session's nursery:
    the notice is routed from the origin it carried and enqueued there, shielded and bounded,
    whether it finished, failed, was aborted or was cancelled by a drain."""
    kind: DeliveryKind = "subagent_failure"
    text = f"Subagent {sub.id} was cancelled before it finished."
    try:
        with rt.registry.track("embedded_run", session.id) as unit:
            unit.progress("embedded_run:started")
            messages: list[Message] = [{"role": "user", "content": sub.task}]
            result = await loop(rt, session, sub.agent, messages, origin, depth=sub.depth, parent=unit)
        kind, text = "subagent_completion", f"Subagent {sub.id} finished: {result}"
        sub.state = "completed"
    except Exception as exc:
        text, sub.state = _failure(rt, session, sub, exc), "failed"
    finally:
        if sub.state == "running":
            sub.state = "cancelled"
        try:
            await _hand_over_notice(rt, session, sub, origin, kind, text)
        finally:
            session.subagents.pop(sub.id, None)
            rt.log.info("SUBAGENT", "Subagent ended", sessionId=session.id, subagentId=sub.id, state=sub.state)


async def _hand_over_notice(
    rt: Runtime, session: Session, sub: Subagent, origin: Origin | None, kind: DeliveryKind, text: str
) -> None:
    """The subagent's notice to the outbox. Not cancelled, it waits as a turn's reply does (the
    outbox retries a full queue disk until it takes the entry); cut by a drain, it tries for
    the cleanup bound. A notice not enqueued either way is kept in the session record, like a
    turn's reply (`_keep_notice`), and enqueued by the next generation (issue 25)."""
    outcome: DeliverOutcome = "failed"
    try:
        if _being_cancelled():
            with trio.move_on_after(rt.cleanup_timeout, shield=True):
                outcome = await deliver(
                    rt, session_id=session.id, kind=kind, origin=origin, agent_id=sub.agent, text=text, key=sub.id
                )
        else:
            outcome = await deliver(
                rt, session_id=session.id, kind=kind, origin=origin, agent_id=sub.agent, text=text, key=sub.id
            )
    finally:
        if outcome == "failed":
            await _keep_notice(rt, session, sub, origin, kind, text)


def _being_cancelled() -> bool:
    """Inside a cancelled scope (a `finally` with `Cancelled` in flight): its deadline is -inf."""
    return trio.current_effective_deadline() == -math.inf


async def _keep_notice(
    rt: Runtime, session: Session, sub: Subagent, origin: Origin | None, kind: DeliveryKind, text: str
) -> None:
    """A turn that owes only this notice (its id the subagent's, which stays the idempotency
    key), saved with the session within the cleanup bound: the next generation, or the next
    process, delivers the kept reply and never runs a model for it (`agent.finish_turn`)."""
    owed = TurnRecord(sub.id, sub.task, origin, kind="internal", status="interrupted", reply=text, reply_kind=kind)
    session.record.turns.append(owed)
    why = "Notice not enqueued; kept in the session for the next generation"
    rt.log.error("SUBAGENT", why, sessionId=session.id, subagentId=sub.id, text=text[:200])
    # In memory it already reaches the next generation; the save is for the next process.
    with trio.move_on_after(rt.cleanup_timeout, shield=True):
        try:
            await rt.store.save(session.record)
        except Exception as exc:  # a full sessions disk too: the in-memory record still has it
            rt.log.error(
                "SESSIONS", "Session not saved; the older copy on disk stands", sessionId=session.id, error=repr(exc)
            )
