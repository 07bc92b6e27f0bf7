"""`<home>/usage.json`: each agent's tokens of the current UTC day, so `agents.*.maxTokensPerDay`
holds across a process restart (a deploy must not hand every agent a fresh allowance).

    {"day": "2026-12-07", "agents": {"main": 1234}}

Written atomically (tmp, fsync, rename) after answered model calls, coalesced: a call waits
for the write on disk (if any), then for one write that began after its tokens were counted,
which it makes itself unless another waiting call does first; so no call waits for more than
two writes however busy the gateway is (a writer that went round for every later call held
its own turn's reply for as long as the load lasted). Best effort: a failed write is logged and
the next call tries again; at worst a crash forgets the last few calls' tokens. A file that
does not parse, is not a regular file, or is larger than `MAX_USAGE_FILE_BYTES` is quarantined
and the day starts from zero.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import trio

from trio_gateway.log import EventLog
from trio_gateway.storage.atomic import BlockingRunner, atomic_write_bytes, compact_json, read_regular
from trio_gateway.storage.entry_files import quarantine

Spent = dict[str, int]

# A day's spend of a few thousand agents is well under this; anything larger is not ours.
MAX_USAGE_FILE_BYTES = 1 << 20


def read_day(path: Path, today: dt.date, log: EventLog) -> Spent:
    """Today's spend per agent from the file; {} when absent, from another day, or unreadable."""
    try:
        raw = json.loads(read_regular(path, MAX_USAGE_FILE_BYTES))
        day = dt.date.fromisoformat(raw["day"])
        agents = {str(k): int(v) for k, v in raw["agents"].items() if isinstance(v, int) and v >= 0}
    except FileNotFoundError:
        return {}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        quarantine(path.parent / "quarantine", path, f"not a usage file: {type(exc).__name__}", log)
        return {}
    return agents if day == today else {}


@attrs.define
class UsageFile:
    """The writer: `await file.save(snapshot)` with `snapshot()` giving (day, spend) at write time."""

    path: Path
    runner: BlockingRunner
    log: EventLog
    _writing: bool = False
    # Writes begun and writes finished (a cancelled one does not finish): one at a time.
    _begun: int = 0
    _finished: int = 0
    _idle: trio.Event = attrs.Factory(trio.Event)

    async def save(self, snapshot: Callable[[], tuple[dt.date, Mapping[str, int]]]) -> None:
        wanted = self._begun + 1  # the first write to begin from now on holds this call's tokens
        while self._finished < wanted:
            if self._writing:
                await self._idle.wait()
            else:
                await self._write_once(snapshot)

    async def _write_once(self, snapshot: Callable[[], tuple[dt.date, Mapping[str, int]]]) -> None:
        self._writing = True
        self._begun += 1
        try:
            day, spent = snapshot()
            await self._write(compact_json({"day": day.isoformat(), "agents": dict(spent)}))
            self._finished = self._begun
        finally:
            self._writing = False
            self._idle.set()
            self._idle = trio.Event()

    async def _write(self, data: bytes) -> None:
        try:
            await self.runner(lambda: atomic_write_bytes(self.path, data))
        except OSError as exc:
            self.log.error("USAGE", "Usage file not written; the next answered call tries again", error=repr(exc))
