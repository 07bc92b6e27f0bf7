"""The event loop's own watchdog (issue 25): nothing may block the Trio thread, and when
something does, the log says which task and for how long.

`LoopWatch` is a Trio `Instrument` timing every task step on the wall clock. A step longer
than `gateway.loopBlockWarnMs` logs `[LOOP] Blocked N ms in task T` and is counted in
`trio_gateway_event_loop_blocked_seconds`. Its `stuck_detector` is an OS thread: when one step
has run for `stuck_after` seconds (the loop has not ticked since), it writes every thread's
stack to the log (faulthandler), once per stuck step; a loop that sleeps between steps (idle,
waiting for I/O) is not stuck.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import attrs
import trio

from trio_gateway.log import EventLog

# How long the loop may be inside one step before every thread's stack is logged.
STUCK_AFTER_SECONDS = 10.0
# Blocked steps of interest run from the warning threshold (0.1 s by default) to a loop that
# was stuck outright.
BLOCKED_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@attrs.define(eq=False)
class BlockedSteps:
    """The histogram of blocked steps: counts per bucket, kept as it goes (bounded memory)."""

    buckets: tuple[float, ...] = BLOCKED_BUCKETS
    counts: list[int] = attrs.Factory(lambda self: [0] * (len(self.buckets) + 1), takes_self=True)
    total_seconds: float = 0.0

    def add(self, seconds: float) -> None:
        index = next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))
        self.counts[index] += 1
        self.total_seconds += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, steps at most that long), as a Prometheus histogram's `_bucket`s."""
        seen = 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            seen += n
            yield bound, seen


@attrs.define(eq=False)
class LoopWatch(trio.abc.Instrument):
    log: EventLog
    # Seconds; read at each step's end (a reload may change `gateway.loopBlockWarnMs`).
    threshold: Callable[[], float] = lambda: 0.1
    stuck_after: float = STUCK_AFTER_SECONDS
    clock: Callable[[], float] = time.perf_counter
    blocked: BlockedSteps = attrs.Factory(BlockedSteps)
    # The running step: when it began and its task's name. Written by the Trio thread, read by
    # the detector thread (one tuple, replaced whole: no torn reads).
    _step: tuple[float, str] | None = None
    _dumped: tuple[float, str] | None = None
    _stop: threading.Event = attrs.Factory(threading.Event)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._step = (self.clock(), task.name)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        elapsed = self.clock() - step[0]
        if elapsed > self.threshold():
            self.blocked.add(elapsed)
            self.log.warn("LOOP", f"Blocked {round(elapsed * 1000)} ms in task {task.name}")

    # --- the OS thread ----------------------------------------------------------------

    @contextlib.contextmanager
    def installed(self) -> Iterator[LoopWatch]:
        """The instrument on the running loop and its detector thread, for the block's length."""
        trio.lowlevel.add_instrument(self)
        detector = threading.Thread(target=self.stuck_detector, name="loop-watchdog", daemon=True)
        self._stop.clear()
        detector.start()
        try:
            yield self
        finally:
            self._stop.set()
            with contextlib.suppress(KeyError):
                trio.lowlevel.remove_instrument(self)

    def stuck_detector(self) -> None:
        # Looks four times per `stuck_after`: a stuck step is reported at most 25 % late.
        while not self._stop.wait(self.stuck_after / 4):
            self.check_stuck()

    def check_stuck(self) -> bool:
        """Log every thread's stack if the current step has run `stuck_after` (once per step)."""
        step = self._step
        if step is None or step is self._dumped or self.clock() - step[0] < self.stuck_after:
            return False
        self._dumped = step
        stuck = self.clock() - step[0]
        self.log.error("LOOP", f"Event loop stuck for {stuck:.1f}s in task {step[1]}; stacks of every thread follow")
        for line in _all_stacks():
            self.log.error("LOOP", line)
        return True


def _all_stacks() -> list[str]:
    """faulthandler's dump of every thread (it reads the stacks without running Python code
    in them, so a thread blocked in a system call is shown where it blocks)."""
    with tempfile.TemporaryFile("w+") as out:
        faulthandler.dump_traceback(out, all_threads=True)
        out.seek(0)
        return [line.rstrip() for line in out if line.strip()]
