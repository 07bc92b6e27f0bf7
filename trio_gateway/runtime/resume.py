"""Turns a drain deadline or a crash left behind (SPEC 6): each runs once more, delivers the
reply it already had, or its requester is told it was lost to a restart.

The gateway hands over the leftover turns (taken before the generation accepted anything),
what the generation runs turns with, and how to start one; nothing here knows generations.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import attrs

from trio_gateway.runtime import agent
from trio_gateway.runtime.session import Runtime, Session, TurnOrder
from trio_gateway.storage.sessions import TurnRecord

Leftover = list[tuple[Session, TurnRecord]]


async def resume_each(
    rt: Runtime,
    leftover: Leftover,
    *,
    accepting: Callable[[], bool],
    start: Callable[[Session, TurnRecord], Awaitable[None]],
) -> None:
    """`accepting()`: False once a drain began (the rest stay on disk for the next generation).
    A session lost to another node meanwhile (cluster mode: a write of it refused, say after
    this node was stopped for a while) is skipped: its turns are the new owner's to resume.

    Every turn takes its place in its session's line first, in this call's first step: the
    write before each start yields, and a turn accepted meanwhile (just after a restart, or on
    the node that just took the session over) must run after them (SPEC 15), not before."""
    places = _Places.take(leftover)
    try:
        await _resume(rt, leftover, places, accepting, start)
    finally:
        places.leave_unstarted()


@attrs.define
class _Places:
    """The places the leftover turns took, each in the line it joined: a later generation may
    start its session's line anew meanwhile (cluster mode resumes outside the work nursery),
    and a place in that new line is not this call's to leave."""

    lines: dict[str, TurnOrder]
    started: set[str] = attrs.Factory(set)

    @classmethod
    def take(cls, leftover: Leftover) -> _Places:
        lines = {}
        for session, turn in leftover:
            session.order.join(turn.id)
            lines[turn.id] = session.order
        return cls(lines)

    def leave(self, turn_id: str) -> None:
        self.lines[turn_id].leave(turn_id)

    def leave_unstarted(self) -> None:
        for turn_id, line in self.lines.items():
            if turn_id not in self.started:
                line.leave(turn_id)


async def _resume(
    rt: Runtime,
    leftover: Leftover,
    places: _Places,
    accepting: Callable[[], bool],
    start: Callable[[Session, TurnRecord], Awaitable[None]],
) -> None:
    for session, turn in leftover:
        if not accepting():
            return
        if session.lost or turn.status == "stopped":
            # Lost: its turns are the new owner's. Stopped: a `/stop` reached it while it
            # waited here, never run again. Either way it leaves the line at once.
            places.leave(turn.id)
            continue
        why = None if turn.reply is not None else why_not_resume(rt, session, turn)
        if turn.reply is not None or why is not None:
            # Its reply (or notice) delivered, not the model run again; the place held until
            # then, so a turn queued behind it cannot answer first.
            try:
                await _end_without_running(rt, session, turn, why)
            finally:
                places.leave(turn.id)
            continue
        turn.resumes += 1
        turn.status = "accepted"
        # Durable before it runs, so a crash mid-turn cannot resume it forever. A write that
        # fails (a full disk, the cluster database restarting) is logged and the turn runs:
        # raised, it would leave this turn and the rest held here and never started.
        await agent.save_best_effort(rt, session.record)
        if session.lost:
            # The write was refused (another node owns the session): it must not run here.
            rt.log.warn(
                "RESTART", "Interrupted turn left to the session's new owner", sessionId=session.id, turnId=turn.id
            )
            places.leave(turn.id)
            continue
        rt.log.info("RESTART", "Resuming interrupted turn", sessionId=session.id, turnId=turn.id)
        if not accepting():
            # A drain began during the save. (Cluster mode resumes from outside the work
            # nursery, which a drain's deadline may have closed by now.) It stays for later.
            return
        places.started.add(turn.id)  # its task leaves the line when it ends (`agent._run_turn`)
        await start(session, turn)


async def _end_without_running(rt: Runtime, session: Session, turn: TurnRecord, why: str | None) -> None:
    if turn.reply is not None:
        # Its reply was known but not enqueued (a full queue disk, or cluster mode's kept
        # reply of a node that died before the turn's end): deliver that.
        rt.log.info("RESTART", "Delivering the kept reply of a turn", sessionId=session.id, turnId=turn.id)
        await agent.finish_turn(rt, session, turn)
    elif why is not None:
        await _give_up(rt, session, turn, why)


def why_not_resume(rt: Runtime, session: Session, turn: TurnRecord) -> str | None:
    if session.record.agent not in rt.config.agents:
        return f"agent {session.record.agent!r} is no longer configured"
    if not rt.config.gateway.drain.resume_interrupted:
        return "it was interrupted by a gateway restart"
    if turn.resumes >= 1:
        return "it was interrupted by gateway restarts twice"
    return None


async def _give_up(rt: Runtime, session: Session, turn: TurnRecord, why: str) -> None:
    text = f"Sorry, this request was not completed: {why}."
    rt.log.warn("RESTART", "Interrupted turn not resumed", sessionId=session.id, turnId=turn.id, why=why)
    # Through the agent's own path: an undeliverable notice is logged, never raised, so a
    # bad leftover turn cannot stop the generation that found it.
    await agent.drop_turn(rt, session, turn, text)
