"""How each subsystem's blocking disk work is run: one thread pool bound per subsystem.

Every subsystem that touches the disk (queue, sessions, logs, console, cursors, access) gets its own
`trio.CapacityLimiter`, so one stuck directory (an NFS mount gone away, a FIFO nobody reads)
uses up only its own threads: the queue hanging never stops sessions from being saved, and
the reverse. Threads are abandonable (`abandon_on_cancel=True`): a cancelled caller leaves
at once and the thread finishes (or hangs) on its own, still holding its limiter token, which
is what makes a stuck subsystem starve itself and nothing else. That is safe only where the
next start can reconcile the outcome: every write here is atomic (temporary file, fsync,
rename), so an abandoned one either happened whole or not at all, and each subsystem says
how it copes (queue: idempotent enqueue by entry id; sessions: sequence numbers; console:
dedupe by idempotency key).

On a MockClock the runners are `inline` (the clock cannot see a thread and would jump).
"""

from __future__ import annotations

import errno
from collections.abc import Callable

import attrs
import trio

from trio_gateway.errors import InsufficientStorageError
from trio_gateway.storage.atomic import BlockingRunner, T

# Threads per subsystem. The queue group-commits (one thread hand-off per batch), so few
# suffice. Every accepted turn waits on its own session fsync before its 202, so sessions get
# trio's usual 40: at 50 concurrent clients the 202's p50 was 943 ms with 8 threads and 396 ms
# with 40 (scripts/soak_turns.py --modes plain, 2,000 turns, load average ~8).
# The pairing book (`access/`) is read for every message heard; a few threads are plenty, and
# its own pool keeps a hung `access/` from using up the threads HTTP reads share.
_LIMITS: dict[str, int] = {"queue": 8, "sessions": 40, "logs": 1, "console": 2, "cursors": 2, "access": 4}

# errno values that mean "no room", which the HTTP edge answers with 507.
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


def _abandonable(limiter: trio.CapacityLimiter) -> BlockingRunner:
    """A runner whose threads draw on `limiter` and are abandoned when the caller is cancelled."""

    async def run(fn: Callable[[], T]) -> T:
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter)

    return run


@attrs.frozen
class DiskRunners:
    """One `BlockingRunner` per subsystem; built once per process, passed at construction."""

    queue: BlockingRunner
    sessions: BlockingRunner
    console: BlockingRunner
    cursors: BlockingRunner
    access: BlockingRunner

    @classmethod
    def threads(cls) -> DiskRunners:
        """Production: abandonable threads, one limiter each."""
        return cls(*(_abandonable(trio.CapacityLimiter(_LIMITS[name])) for name in SUBSYSTEMS))

    @classmethod
    def same(cls, runner: BlockingRunner) -> DiskRunners:
        """Every subsystem on one runner (`inline` on a MockClock)."""
        return cls(runner, runner, runner, runner, runner)


SUBSYSTEMS = tuple(a.name for a in attrs.fields(DiskRunners))


@attrs.define
class StorageHealth:
    """Which subsystems' disks are refusing writes right now. Set by whoever retries accepted
    work against a full disk (the outbox), cleared by its next success; `check` is how intake
    refuses NEW work meanwhile (507) instead of accepting turns whose replies cannot be kept."""

    full: dict[str, str] = attrs.Factory(dict)

    def failed(self, subsystem: str, exc: BaseException) -> None:
        self.full[subsystem] = f"{type(exc).__name__}: {exc}"

    def recovered(self, subsystem: str) -> None:
        self.full.pop(subsystem, None)

    def check(self) -> None:
        if self.full:
            what = "; ".join(f"{name} disk: {why}" for name, why in sorted(self.full.items()))
            raise InsufficientStorageError(f"not accepting new work until storage recovers ({what})")
