"""Per-session state on disk (SPEC 2, 6): history and accepted-but-unfinished turns.

A turn is written here before it is acknowledged, so accepted work survives a restart or a
crash. A turn still listed at start-up, or one a drain deadline cut off, is `interrupted` and is
run once more (or its requester is told), never silently dropped. Each session is one file,
replaced atomically; an unreadable file is moved to `sessions/quarantine/`, never deleted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any, Literal

import attrs

from trio_gateway.config import make_strict_converter
from trio_gateway.log import EventLog
from trio_gateway.routing import Origin
from trio_gateway.store import BlockingRunner, atomic_write_bytes, durable_rename

TurnKind = Literal["inbound", "cron", "internal"]
TurnStatus = Literal["accepted", "running", "interrupted"]

# History kept per session: enough context for a chat, bounded so a file stays small.
MAX_HISTORY = 40


@attrs.define
class TurnRecord:
    id: str
    prompt: str
    origin: Origin | None
    kind: TurnKind = "inbound"
    status: TurnStatus = "accepted"
    resumes: int = 0
    accepted_at: dt.datetime | None = None
    # A turn armed to stall its model call (the test endpoint), in seconds.
    stall_seconds: float | None = None


@attrs.define
class SessionRecord:
    id: str
    agent: str
    origin: Origin | None
    created_at: dt.datetime
    history: list[dict[str, Any]] = attrs.Factory(list)
    turns: list[TurnRecord] = attrs.Factory(list)

    def remember(self, messages: list[dict[str, Any]]) -> None:
        self.history.extend(messages)
        del self.history[:-MAX_HISTORY]


_CONVERTER = make_strict_converter()


@attrs.define
class SessionStore:
    root: Path
    runner: BlockingRunner
    log: EventLog

    def _path(self, session_id: str) -> Path:
        return self.root / f"{session_id}.json"

    async def save(self, record: SessionRecord) -> None:
        data = json.dumps(_CONVERTER.unstructure(record), ensure_ascii=False).encode()
        path = self._path(record.id)
        await self.runner(lambda: atomic_write_bytes(path, data))

    async def load_all(self) -> list[SessionRecord]:
        records: list[SessionRecord] = await self.runner(self._load_all_sync)
        return records

    def _load_all_sync(self) -> list[SessionRecord]:
        records: list[SessionRecord] = []
        if not self.root.exists():
            return []
        for path in sorted(self.root.glob("*.json")):
            try:
                records.append(_CONVERTER.structure(json.loads(path.read_bytes()), SessionRecord))
            except Exception as exc:  # any unreadable file: keep it for a person, move on
                self._quarantine(path, exc)
        return records

    def _quarantine(self, path: Path, exc: Exception) -> None:
        target = self.root / "quarantine" / f"{path.name}.{os.getpid()}"
        durable_rename(path, target)
        self.log.error("SESSIONS", "Unreadable session file quarantined", file=str(target), error=str(exc)[:200])
