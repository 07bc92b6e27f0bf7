"""The drain: ONE deadline around waiting for active work, then cancellation.

    with trio.move_on_after(timeout):
        await busy.wait_value(0)         # every session of the generation has finished
    if still busy:
        work_scope.cancel()              # the generation's work nursery: all of it, at once

There is no loop that decides whether to keep waiting: the only wait is bounded by the one
deadline, so a stalled upstream can delay a restart by `timeout` and not a second more. A
progress task reports what is still running while the wait lasts; it only reads.

A pending delivery retry is not in the work nursery (it is a file on disk with a due time), so
it is neither waited for nor counted.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Literal

import attrs
import trio
from trio_util import AsyncValue

from trio_gateway.log import EventLog, ms
from trio_gateway.work.units import WorkUnit

DrainKind = Literal["restart", "stop"]


@attrs.frozen
class DrainCounts:
    tasks: int  # session tasks still running (turns and the subagents they started)
    embedded_runs: int  # subagent runs among them
    blockers: tuple[WorkUnit, ...]  # active leaf work, oldest progress first


@attrs.frozen
class DrainReport:
    kind: DrainKind
    forced: bool
    timed_out: bool
    timeout_seconds: float
    started_at: float
    waited_seconds: float  # request to work gone (cleanup included)
    aborted_tasks: int
    aborted_work: tuple[str, ...]  # "model_call session=s-1-1" for each unit cut off
    # Why the restart's reload of gateway.json was refused (the old config kept), else None.
    config_rejected: str | None = None

    def log_finished(self, log: EventLog, generation: int) -> None:
        """The drain's last lines. "cleanly" only when nothing was cut (issue 25: an operator
        grepping for it must not be told a forced abort was clean); the same shape either way,
        so a reader looking for how long the shutdown took finds it."""
        took = ms(self.waited_seconds)
        if not self.timed_out:
            log.info("DRAINING", "All tasks cleared; proceeding with shutdown")
            log.info("SHUTDOWN", f"Shutdown completed cleanly in {took}", generation=generation)
            return
        why = f"Shutdown completed in {took} after forcing task abort"
        log.warn("SHUTDOWN", why, generation=generation, aborted=len(self.aborted_work))


@attrs.define(eq=False)
class DrainRequest:
    """One drain. Later requests join it: they wait on the same `done`, and may only make it
    stricter (force, or a shorter timeout), never longer."""

    kind: DrainKind
    force: bool
    timeout_seconds: float
    requested_at: float
    done: trio.Event = attrs.Factory(trio.Event)
    report: DrainReport | None = None
    # The running drain's deadline scope, so a joining request can tighten it.
    deadline_scope: trio.CancelScope | None = None
    new_generation: int | None = None

    def join(self, *, kind: DrainKind, force: bool, timeout_seconds: float) -> None:
        if kind == "stop":
            self.kind = "stop"  # a stop wins over a restart: the operator wants the process gone
        if force:
            self.force = True
        deadline = trio.current_time() + (0.0 if force else timeout_seconds)
        if deadline < self.requested_at + self.timeout_seconds:
            self.timeout_seconds = deadline - self.requested_at
        if self.deadline_scope is not None:
            self.deadline_scope.deadline = min(self.deadline_scope.deadline, deadline)

    @property
    def deadline(self) -> float:
        return self.requested_at + (0.0 if self.force else self.timeout_seconds)

    def finish(self, timed_out: bool, left: DrainCounts) -> DrainReport:
        """The drain's report, now that its work is gone: what the deadline cut off, if it did."""
        cut = left.blockers if timed_out else ()
        self.report = DrainReport(
            kind=self.kind,
            forced=self.force,
            timed_out=timed_out,
            timeout_seconds=self.timeout_seconds,
            started_at=self.requested_at,
            waited_seconds=trio.current_time() - self.requested_at,
            aborted_tasks=left.tasks if timed_out else 0,
            aborted_work=tuple(f"{u.kind} session={u.session_id or '-'}" for u in cut),
        )
        return self.report


async def drain(
    request: DrainRequest,
    *,
    busy: AsyncValue[int],
    counts: Callable[[], DrainCounts],
    work_scope: trio.CancelScope,
    progress_interval: float,
    log: EventLog,
) -> tuple[bool, DrainCounts]:
    """Wait for the generation's work under the request's one deadline, then cancel what is
    left. Returns (timed_out, what was still running when the deadline struck)."""
    initial = counts()
    log.info("DRAINING", f"Starting graceful drain of {initial.tasks} task(s), timeout={ms(request.timeout_seconds)}")
    async with trio.open_nursery() as reporter:
        reporter.start_soon(_report_progress, request, counts, progress_interval, log)
        with trio.CancelScope(deadline=request.deadline) as deadline:
            request.deadline_scope = deadline
            await busy.wait_value(0)
        request.deadline_scope = None
        reporter.cancel_scope.cancel()
    if busy.value == 0:
        return False, initial
    left = counts()
    if request.force:
        log.warn("DRAINING", f"Forced drain; aborting {left.tasks} task(s) now")
    else:
        log.warn("DRAINING", f"Draining timeout exceeded ({ms(request.timeout_seconds)}); forcing task abort")
    # One summary line, not one `[ABORT COMPLETE]` per unit: at 10,000 cut calls the log
    # itself would become the slow part of the cut.
    kinds = Counter(u.kind for u in left.blockers)
    summary = " ".join(f"{kind}={n}" for kind, n in sorted(kinds.items()))
    log.warn("DRAINING", f"Aborting {len(left.blockers)} unit(s) of work", **({"kinds": summary} if summary else {}))
    work_scope.cancel()
    return True, left


async def close_bounded(close: Callable[[], Awaitable[None]], seconds: float) -> None:
    """Close a client after (or during) a drain: bounded, so closing cannot hang a restart
    either, and shielded, because it runs while the generation may be cancelled."""
    with trio.move_on_after(seconds, shield=True):
        await close()


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a generation's work unwinds.

    Cancelling thousands of tasks allocates thousands of exceptions and tracebacks; each
    allocation burst triggers full collections that scan every live session object, which
    measured as 60% of a 10,000-session forced restart (2.2 s -> 0.9 s without it). The cut is
    bounded (cleanup is shielded with a short timeout), and the collector runs again at exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _report_progress(
    request: DrainRequest, counts: Callable[[], DrainCounts], interval: float, log: EventLog
) -> None:
    while True:
        await trio.sleep(interval)
        now = trio.current_time()
        remaining = request.deadline - now
        if remaining <= 0:
            return  # the deadline's own line says the rest
        c = counts()
        blockers = " ".join(f"{u.kind}@{u.session_id or '-'}(idle {round(u.idle_for(now))}s)" for u in c.blockers[:3])
        log.info(
            "DRAINING",
            f"still draining {c.tasks} active task(s) and {c.embedded_runs} active embedded run(s)... "
            f"({round(remaining)}s remaining)",
            **({"blockers": blockers} if blockers else {}),
        )
