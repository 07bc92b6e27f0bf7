"""The session's inbox (issue 11): work handed to a busy session joins the nursery its task
owns, or is refused so the caller starts a new task; never lost, never an error from a
nursery that is closing. Swept over every scheduling step around the task's end, on the
MockClock."""

from __future__ import annotations

import datetime as dt
from functools import partial

import trio

from trio_gateway.runtime.session import Session, SessionInbox, serve_session
from trio_gateway.storage.sessions import SessionRecord

STEPS = 12  # checkpoints swept after the session's last job ends: past its whole close


def new_session() -> Session:
    return Session(SessionRecord("s-1", "main", None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))


async def hand_in(session: Session, work: trio.Nursery, job: str, ran: list[tuple[str, int]], tasks: list[int]) -> bool:
    """What the gateway does with a turn: into the session's task, else a new task for it.
    True when the running task took it."""

    async def run() -> None:
        ran.append((job, len(tasks)))
        await trio.sleep(1)

    inbox = session.inbox
    if inbox is not None and inbox.start_soon(run):
        return True
    assert inbox is None or inbox.closed  # refused only once the task takes nothing more
    tasks.append(len(tasks))
    await work.start(partial(serve_session, session, run))
    return False


async def spawn_one(session: Session) -> None:
    """A first turn that leaves a subagent running for one second."""
    assert session.inbox is not None
    assert session.inbox.start_soon(trio.sleep, 1)
    await trio.lowlevel.checkpoint()


async def test_a_turn_handed_in_as_the_last_one_ends_is_run_once(autojump_clock: trio.abc.Clock) -> None:
    outcomes = set()
    for steps in range(STEPS):
        session, ran, tasks = new_session(), [], [0]
        async with trio.open_nursery() as work:
            await work.start(partial(serve_session, session, partial(spawn_one, session)))
            await trio.sleep(1)  # the session's last job ends now: its task is closing the inbox
            for _ in range(steps):
                await trio.lowlevel.checkpoint()
            outcomes.add(await hand_in(session, work, "late", ran, tasks))
        assert [job for job, _ in ran] == ["late"]  # run, exactly once
        assert session.inbox is None  # every task that owned it is gone
    assert outcomes == {True, False}  # the sweep saw it joined AND refused (then started anew)


async def shielded_child(started: list[int]) -> None:
    started.append(1)
    with trio.CancelScope(shield=True):
        await trio.sleep(1)  # a bounded cleanup: the nursery waits for it


async def test_a_job_handed_in_while_an_abort_unwinds_is_refused_not_an_error(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An abort: the nursery waits for its cancelled children, then closes. Handing in during
    that (a subagent's spawn path takes no cancel check of its own) must not reach the
    nursery: `start_soon` on a closed nursery raises RuntimeError."""
    refused_after_close = 0
    for steps in range(STEPS):
        session, started = new_session(), []
        async with trio.open_nursery() as work:
            await work.start(partial(serve_session, session, trio.sleep_forever))
            inbox = session.inbox
            assert isinstance(inbox, SessionInbox)
            child = partial(shielded_child, started)
            assert inbox.start_soon(child)
            await trio.sleep(0.5)
            inbox.cancel("test: session aborted")
            await trio.sleep(0.5)  # the child's cleanup ends now: the nursery is closing
            for _ in range(steps):
                await trio.lowlevel.checkpoint()
            assert inbox.cancelled
            if not inbox.start_soon(child):
                refused_after_close += 1
        assert started == [1]  # the first child only
    assert refused_after_close == STEPS
