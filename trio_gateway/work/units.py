"""The registry of units of work: what is running, of what kind, and when it last made progress.

Every unit (`model_call`, `tool_call`, `api_request`, `embedded_run`, `delivery_attempt`) runs
inside `WorkRegistry.track(...)`, which gives it its own cancel scope. The work records its own
progress (`unit.progress("model_call:first_token")`, once per streamed chunk); nobody guesses.
The stall watchdog and the drain read this registry; cancelling `unit.scope` is how either
stops one unit without touching its neighbours.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import attrs
import trio

from trio_gateway.errors import WorkAbortedError, leaves
from trio_gateway.log import EventLog

WorkKind = Literal["model_call", "tool_call", "api_request", "embedded_run", "delivery_attempt"]


@attrs.define(eq=False)
class WorkUnit:
    id: int
    kind: WorkKind
    session_id: str | None
    started_at: float
    last_progress_at: float
    last_progress: str
    # The unit this one runs inside (a model call inside a subagent's embedded run): progress
    # here is progress there too, so a container is never judged stalled while its child moves.
    parent: WorkUnit | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    stall_reported: bool = False

    def progress(self, label: str | None = None) -> None:
        """Record that the work moved. Called by the work itself (per chunk, per step)."""
        now = trio.current_time()
        self.last_progress_at = now
        if label is not None:
            self.last_progress = label
        parent = self.parent
        while parent is not None:
            parent.last_progress_at = now
            parent = parent.parent

    def abort(self, reason: str) -> None:
        """Cancel this unit's scope, saying why. Trio keeps the first reason (a later abort of
        the same unit is a no-op) and hands it to every `Cancelled` the scope delivers, which is
        where `WorkRegistry.track` reads it back."""
        self.scope.cancel(reason=reason)

    @property
    def aborted(self) -> bool:
        """Someone cut this unit off (stall recovery, a session abort)."""
        return self.scope.cancel_called

    def age(self, now: float) -> float:
        return now - self.started_at

    def idle_for(self, now: float) -> float:
        return now - self.last_progress_at


@attrs.define
class WorkRegistry:
    log: EventLog
    _units: dict[int, WorkUnit] = attrs.Factory(dict)
    _ids: Iterator[int] = attrs.Factory(lambda: itertools.count(1))
    aborts_by_kind: dict[str, int] = attrs.Factory(dict)

    def units(self) -> list[WorkUnit]:
        return list(self._units.values())

    def for_session(self, session_id: str) -> list[WorkUnit]:
        return [u for u in self._units.values() if u.session_id == session_id]

    @contextmanager
    def track(
        self, kind: WorkKind, session_id: str | None = None, parent: WorkUnit | None = None
    ) -> Iterator[WorkUnit]:
        """Run the body as one unit of work in its own cancel scope.

        If the unit is aborted (stall recovery, session abort) the body sees `trio.Cancelled`,
        the scope absorbs it, and the caller gets `WorkAbortedError` naming the reason, so a
        turn can end with a clear failure instead of a silent nothing. A cancellation from an
        enclosing scope (a drain deadline) is not absorbed: it propagates as `Cancelled`.
        """
        now = trio.current_time()
        unit = WorkUnit(next(self._ids), kind, session_id, now, now, f"{kind}:started", parent)
        self._units[unit.id] = unit
        reasons: list[str] = []
        try:
            with unit.scope:
                try:
                    yield unit
                except BaseException as exc:
                    # The reason `abort` gave rides on each `Cancelled` the scope is about to
                    # absorb. Re-raised as it came (not `except*`, which would wrap a bare
                    # `Cancelled` in a group): an enclosing scope's passes through untouched.
                    reasons += _cancel_reasons(exc)
                    raise
        finally:
            del self._units[unit.id]
            if unit.aborted:
                self.count_abort(kind)
                self._log_abort_complete(unit)
        if unit.aborted and unit.scope.cancelled_caught:
            raise WorkAbortedError(f"{kind} aborted: {reasons[0] if reasons else 'cancelled'}")

    def count_abort(self, kind: str) -> None:
        """One unit of `kind` was cut off (stall recovery, session abort or a drain): /metrics."""
        self.aborts_by_kind[kind] = self.aborts_by_kind.get(kind, 0) + 1

    def _log_abort_complete(self, unit: WorkUnit) -> None:
        took = round(trio.current_time() - unit.started_at)
        session = unit.session_id or "-"
        self.log.info("ABORT COMPLETE", f"{unit.kind} terminated after {took}s", session=session)


def _cancel_reasons(exc: BaseException) -> list[str]:
    """The reasons the `Cancelled` in `exc` (bare or in a group) were given."""
    if isinstance(exc, trio.Cancelled):
        return [exc.reason] if exc.reason is not None else []
    cancelled = exc.subgroup(trio.Cancelled) if isinstance(exc, BaseExceptionGroup) else None
    return [] if cancelled is None else [c.reason for c in leaves(cancelled) if c.reason is not None]
