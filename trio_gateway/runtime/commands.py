"""Chat commands (SPEC 15): `/stop`, `/new` (`/reset`), `/status`, `/help`, answered by the
gateway itself, at once, even while a turn of the conversation runs.

A command is never a turn: it does not wait in the session's inbox or behind its lock, it runs
in the intake's own task (the listener's or the webhook request's), and its reply is enqueued
before intake returns, so the platform's cursor or 200 moves only once the reply is durable.

`/stop` cancels the session's scope: the running turn, its model call, its tool calls (an MCP
server is sent `notifications/cancelled` by the SDK as its request is cancelled), its subagents,
and the turns queued behind it. Those queued turns are the same person's earlier messages; a
person who says stop means all of it (OpenClaw's `/stop` drops the queued follow-ups too). A
message sent after `/stop` starts a fresh session task. Every stopped turn is taken out of the
record's pending turns and saved as `stopped` before `Stopped.` is enqueued: from then on
neither a restart nor another node resumes it.
"""

from __future__ import annotations

import secrets

import trio

from trio_gateway.errors import BadRequestError
from trio_gateway.policy import commands
from trio_gateway.policy.commands import CommandName
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.agent import save_best_effort
from trio_gateway.runtime.session import Runtime, Session
from trio_gateway.runtime.sessions import SessionTable


async def handle(
    table: SessionTable,
    rt: Runtime,
    name: CommandName,
    *,
    agent_id: str,
    origin: Origin,
    sender: str | None,
    inbound_id: str | None,
) -> tuple[str, str]:
    """Do the command and enqueue its reply (durable when this returns). Returns (session id or
    "-", the reply's idempotency key) in the place of a turn's (session, turn)."""
    if agent_id not in rt.config.agents:
        raise BadRequestError(f"agent: no agent named {agent_id!r}")
    session = await table.existing(agent_id, origin)
    if name == "stop":
        text = (
            commands.STOPPED
            if await stop(rt, session, f"stopped by {sender or origin.to}")
            else commands.NOTHING_TO_STOP
        )
    elif name == "new":
        if session is not None:
            await stop(rt, session, f"new session asked by {sender or origin.to}", end=table)
        text = commands.NEW_SESSION
    elif name == "status":
        text = status_text(rt, agent_id, session)
    else:
        text = commands.HELP
    # One key per command message: a message heard again (a re-read after a crash, a webhook
    # retry) repeats the key, which the delivery path knows as the same reply.
    key = f"cmd-{origin.channel}-{origin.account_id}-{inbound_id}" if inbound_id else f"cmd-{secrets.token_hex(8)}"
    # Raises when the queue cannot take it: the listener keeps its cursor (the webhook answers
    # 5xx) and the command is heard again, so nobody is left without an answer.
    await rt.outbox.submit(kind="reply", origin=origin, agent_id=agent_id, text=text, idempotency_key=key)
    rt.log.info("COMMAND", f"/{name} answered", sessionId=session.id if session else "-", sender=sender or "-")
    return (session.id if session is not None else "-"), key


async def stop(rt: Runtime, session: Session | None, reason: str, *, end: SessionTable | None = None) -> bool:
    """Stop everything of `session` (see the module's doc); `end`: also end the session
    (`/new`). True when there was something to stop. Marked, cancelled and saved in that
    order: the marks and the cancel are one step (no checkpoint), so no turn can start, finish
    or be resumed between them; the save makes the marks survive a crash."""
    if session is None:
        return False
    # A turn that already has its reply only owes the delivery of it: that is not stopped.
    victims = [t for t in session.record.turns if t.reply is None]
    inbox = session.inbox
    running = inbox is not None and not inbox.cancelled
    for turn in victims:
        session.record.stop(turn)
        session.finish(turn.id, ok=False, text=commands.STOPPED)  # a `session start --wait` is told
    if running:
        assert inbox is not None
        inbox.cancel(reason=reason)
    if end is not None:
        end.end(session)
    if victims or end is not None:
        rt.log.warn("COMMAND", "Session stopped", sessionId=session.id, reason=reason, turns=len(victims))
        await save_best_effort(rt, session.record)
    return bool(victims) or running


def status_text(rt: Runtime, agent_id: str, session: Session | None) -> str:
    """`/status`: agent and model, the session, and what runs now with its age."""
    agent = rt.config.agents[agent_id]
    model = rt.config.models.get(agent.model)
    upstream = "" if model is None else f", {model.kind}" + (f" {model.model}" if model.model else "")
    lines = [f"Agent: {agent_id} (model: {agent.model}{upstream})"]
    if session is None:
        lines.append("Session: none yet (your next message starts one)")
        return "\n".join(lines)
    record, now = session.record, trio.current_time()
    age = (rt.wall() - record.created_at).total_seconds()
    lines.append(f"Session: {session.id}, started {_ago(age)} ago, {len(record.history) // 2} exchanges in history")
    queued = session.waiting
    running = 1 if session.current is not None else 0
    lines.append(f"Turns: {running} running, {queued} waiting, {len(record.turns)} pending in all")
    for unit in sorted(rt.registry.for_session(session.id), key=lambda u: u.started_at):
        lines.append(f"- {unit.kind} running {_ago(unit.age(now))}, last progress {_ago(unit.idle_for(now))} ago")
    for sub in session.subagents.values():
        lines.append(f"- subagent {sub.id} ({sub.agent}, depth {sub.depth}) {sub.state}")
    if len(lines) == 3:
        lines.append("Nothing running.")
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"
