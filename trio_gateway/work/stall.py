"""The stall watchdog: finds work that stopped making progress and cancels exactly that work.

One task wakes every `checkIntervalSeconds` and reads the work registry. A unit whose last
progress is older than `thresholdSeconds` is a stalled agent run: it is logged once, and when
recovery for its kind is `abort` its own cancel scope is cancelled. Cancelling the scope is the
whole recovery: httpx closes the upstream socket, the turn sees `WorkAbortedError` and tells
its requester, and nothing else in the session or the gateway is touched.

Detection latency is bounded by threshold + one check interval, because every check sees
every unit.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from trio_gateway.log import EventLog
from trio_gateway.policy.config import StallConfig
from trio_gateway.work.units import WorkRegistry, WorkUnit

# Units that only contain other work: their progress is their children's, so they are never
# judged on their own (a subagent waiting on a streaming model call is not stalled).
CONTAINER_KINDS = frozenset({"embedded_run"})


@attrs.frozen
class StallVerdict:
    unit: WorkUnit
    idle_for: float
    recovery: str


def _find_stalled(units: list[WorkUnit], config: StallConfig, now: float) -> list[StallVerdict]:
    """Units past the threshold that have not been reported yet, oldest progress first."""
    verdicts = [
        StallVerdict(u, u.idle_for(now), config.recovery.for_kind(u.kind))
        for u in units
        if u.kind not in CONTAINER_KINDS and not u.stall_reported and u.idle_for(now) >= config.threshold_seconds
    ]
    return sorted(verdicts, key=lambda v: -v.idle_for)


@attrs.define
class StallWatchdog:
    registry: WorkRegistry
    config: StallConfig
    log: EventLog
    # How deep a session's queue is, for the log line; the runtime knows, the watchdog asks.
    queue_depth: Callable[[str | None], int] = lambda _session: 0
    stalled_total: int = 0

    async def run(self) -> None:
        if not self.config.enabled:
            return
        while True:
            await trio.sleep(self.config.check_interval_seconds)
            self.check_once()

    def check_once(self) -> list[StallVerdict]:
        now = trio.current_time()
        verdicts = _find_stalled(self.registry.units(), self.config, now)
        for verdict in verdicts:
            self._recover(verdict, now)
        return verdicts

    def _recover(self, verdict: StallVerdict, now: float) -> None:
        unit = verdict.unit
        unit.stall_reported = True
        self.stalled_total += 1
        session = unit.session_id or "-"
        self.log.warn(
            "STALLED SESSION DETECTED",
            "",
            sessionId=session,
            state="processing",
            age=f"{round(unit.age(now))}s",
            queueDepth=self.queue_depth(unit.session_id),
            reason="active_work_without_progress",
            classification="stalled_agent_run",
            activeWorkKind=unit.kind,
            lastProgress=unit.last_progress,
            lastProgressAge=f"{round(verdict.idle_for)}s",
            recovery=verdict.recovery,
        )
        if verdict.recovery == "abort":
            self.log.warn("AUTO-ABORT", f"Aborting stalled {unit.kind} in", session=session)
            unit.abort(f"no progress for {round(verdict.idle_for)}s (stall recovery)")
