"""Fault injection as a kit: a disk that hangs or is full, a channel or a model that hangs.

The `[faults]` table of a scenario (and the `Faults` a test hands `Harness.build`) names a
mode per subsystem:

    [faults]
    queueDisk = "hang"        # or "enospc"; likewise sessionsDisk, logFile, consoleFile
    channelSend = "hang"      # a send that never answers
    modelCall = "hang"        # a model call that never answers
    fromSeconds = 0           # when the faults begin (scenario seconds)
    untilSeconds = 30         # when the disk answers / space returns (default: never)

Each fault is a real part passed at construction, never a monkeypatch: a `BlockingRunner`
that hangs or raises ENOSPC in front of the subsystem's own runner, an opener for the log
file, a channel and a model wrapper. A hung disk call is modelled as what the production
runner makes of it (`DiskRunners.threads`): the caller waits until the disk answers or it is
cancelled, whichever comes first.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Literal

import attrs
import trio

from trio_gateway.log import open_append
from trio_gateway.storage.atomic import BlockingRunner, T

FaultMode = Literal["hang", "enospc"]
HangOnly = Literal["hang"]


@attrs.frozen
class Faults:
    queue_disk: FaultMode | None = None
    sessions_disk: FaultMode | None = None
    log_file: FaultMode | None = None
    console_file: FaultMode | None = None
    channel_send: HangOnly | None = None
    model_call: HangOnly | None = None
    from_seconds: float = 0.0
    until_seconds: float | None = None

    def any(self) -> bool:
        return any(getattr(self, name) for name in SUBSYSTEMS)


SUBSYSTEMS = ("queue_disk", "sessions_disk", "log_file", "console_file", "channel_send", "model_call")


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, "No space left on device (injected)")


@attrs.define(eq=False)
class FaultSwitch:
    """One subsystem's fault: off until `arm()`, on until `clear()` (the disk answers again,
    space returns). Read from trio tasks and from the log's writer thread alike."""

    mode: FaultMode | None
    armed: bool = False
    _answered: trio.Event = attrs.Factory(trio.Event)
    _answered_thread: threading.Event = attrs.Factory(threading.Event)

    def arm(self) -> None:
        if self.mode is not None:
            self.armed = True

    def clear(self) -> None:
        self.armed = False
        self._answered.set()
        self._answered_thread.set()

    def active(self, mode: FaultMode) -> bool:
        return self.armed and self.mode == mode

    async def hold(self) -> None:
        """In trio: a hung call waits here until the disk answers (or its caller is cancelled)."""
        if self.active("hang"):
            await self._answered.wait()
        if self.active("enospc"):
            await trio.lowlevel.checkpoint()
            raise _no_space()

    def hold_thread(self) -> None:
        """In a thread: blocks while hung (until `clear`), raises ENOSPC while full."""
        if self.active("hang"):
            self._answered_thread.wait()
        if self.active("enospc"):
            raise _no_space()


def faulty_runner(inner: BlockingRunner, switch: FaultSwitch) -> BlockingRunner:
    """`inner`, behind a disk that may hang or be full."""

    async def run(fn: Callable[[], T]) -> T:
        await switch.hold()
        return await inner(fn)

    return run


@attrs.define
class _FaultyFile:
    inner: IO[str]
    switch: FaultSwitch

    def write(self, text: str) -> int:
        self.switch.hold_thread()
        return self.inner.write(text)

    def close(self) -> None:
        self.inner.close()


def faulty_opener(switch: FaultSwitch) -> Callable[[Path], IO[str]]:
    """A `FileSink` opener whose file's writes hang or fail with ENOSPC while the fault lasts."""

    def opener(path: Path) -> IO[str]:
        switch.hold_thread()
        return _FaultyFile(open_append(path), switch)  # type: ignore[return-value]  # the two calls FileSink makes

    return opener


@attrs.define
class FaultKit:
    """Every switch of one run, armed and cleared together on the scenario's clock."""

    faults: Faults
    switches: dict[str, FaultSwitch] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.switches = {name: FaultSwitch(getattr(self.faults, name)) for name in SUBSYSTEMS}

    def switch(self, name: str) -> FaultSwitch:
        return self.switches[name]

    def arm(self) -> None:
        for switch in self.switches.values():
            switch.arm()

    def clear(self) -> None:
        for switch in self.switches.values():
            switch.clear()

    async def run(self, t0: float) -> None:
        """Arm at `fromSeconds`, clear at `untilSeconds` (scenario seconds from `t0`)."""
        await trio.sleep_until(t0 + self.faults.from_seconds)
        self.arm()
        if self.faults.until_seconds is not None:
            await trio.sleep_until(t0 + self.faults.until_seconds)
            self.clear()
