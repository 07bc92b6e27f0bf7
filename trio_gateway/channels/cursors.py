"""Where listeners keep their place (SPEC 11): `inbound/<channel>/<accountId>.json`, or the
cluster database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import attrs

from trio_gateway.log import EventLog
from trio_gateway.storage.atomic import BlockingRunner, atomic_write_json, durable_rename, read_regular

# A cursor is an offset or a short token; a file larger than this is not one of ours.
MAX_CURSOR_FILE_BYTES = 64 * 1024


# --- cursors -------------------------------------------------------------------------------------


class Cursors(Protocol):
    """Where listeners keep their place: files under `inbound/` (`CursorStore`), or the
    cluster database (`cluster.inbound.PgCursors`, SPEC 12)."""

    async def load(self, channel: str, account_id: str) -> Any: ...

    async def save(self, channel: str, account_id: str, cursor: Any) -> None: ...


@attrs.define
class CursorStore:
    """`inbound/<channel>/<accountId>.json`: `{"cursor": …}`, replaced atomically. An unreadable
    file is quarantined (never deleted) and the account starts from the platform's default."""

    root: Path
    runner: BlockingRunner
    log: EventLog

    def path(self, channel: str, account_id: str) -> Path:
        return self.root / channel / f"{account_id}.json"

    async def load(self, channel: str, account_id: str) -> Any:
        path = self.path(channel, account_id)
        return await self.runner(lambda: self._load_sync(path))

    def _load_sync(self, path: Path) -> Any:
        try:  # bounded, and a FIFO or a device is refused, not read (issue 25)
            data = json.loads(read_regular(path, MAX_CURSOR_FILE_BYTES))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._quarantine(path, exc)
            return None
        if not isinstance(data, dict):
            self._quarantine(path, ValueError("not a JSON object"))
            return None
        return data.get("cursor")

    def _quarantine(self, path: Path, exc: Exception) -> None:
        target = path.parent / "quarantine" / path.name
        durable_rename(path, target)
        self.log.error("CHANNEL", "Unreadable cursor file quarantined", file=str(target), error=str(exc)[:200])

    async def save(self, channel: str, account_id: str, cursor: Any) -> None:
        path = self.path(channel, account_id)
        await self.runner(lambda: atomic_write_json(path, {"cursor": cursor}))
