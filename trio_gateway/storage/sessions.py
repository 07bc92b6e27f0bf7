"""Per-session state on disk (SPEC 2, 6): history and accepted-but-unfinished turns.

A turn is written here before it is acknowledged, so accepted work survives a restart or a
crash. A turn still listed at start-up, or one a drain deadline cut off, is `interrupted` and is
run once more (or its requester is told), never silently dropped. Each session is one file,
replaced atomically; an unreadable file is moved to `sessions/quarantine/`, never deleted.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs

from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.policy.entry import DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import BlockingRunner, atomic_write_bytes, durable_rename, read_regular

TurnKind = Literal["inbound", "cron", "internal"]
# `stopped`: a person sent `/stop` (SPEC 15); such a turn is never run again, by any node.
TurnStatus = Literal["accepted", "running", "interrupted", "stopped"]

# Session ids name files under sessions/: a plain name, never a path.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

# History kept per session: enough context for a chat, bounded so a file stays small.
_MAX_HISTORY = 40
# Platform message ids heard in this conversation (SPEC 11): far more than one poll batch or
# webhook retry window, so a message read again after a crash is recognised.
_MAX_INBOUND_IDS = 256
# Stopped turns kept in the record, for a person reading it: the last few are enough.
_MAX_STOPPED = 16
# 40 messages of history, each at most a model's answer or a request body: far under this.
MAX_SESSION_FILE_BYTES = 256 * 1024 * 1024


@attrs.define
class TurnRecord:
    id: str
    prompt: str
    origin: Origin | None
    kind: TurnKind = "inbound"
    status: TurnStatus = "accepted"
    resumes: int = 0
    accepted_at: dt.datetime | None = None
    # The reply (or notice) this turn owes its requester, once known but not yet enqueued
    # (a full queue disk): a resumed turn delivers it instead of running the model again.
    reply: str | None = None
    reply_kind: DeliveryKind | None = None


@attrs.define
class SessionRecord:
    id: str
    agent: str
    origin: Origin | None
    created_at: dt.datetime
    history: list[dict[str, Any]] = attrs.Factory(list)
    turns: list[TurnRecord] = attrs.Factory(list)
    # Written in the same atomic write as the turn each id started: a message is either a
    # turn and known, or neither; never answered twice, never lost.
    inbound_ids: list[str] = attrs.Factory(list)
    # The last number handed out for an id inside this session (turns, subagents). Stored, so a
    # session read back after a restart (or adopted by another node) never reuses a turn id:
    # turn ids are the replies' idempotency keys, and a platform drops a reused one as a repeat.
    seq: int = 0
    # Turns a `/stop` cut off, status `stopped`: out of `turns`, so neither a restart nor an
    # adopting node ever resumes them (SPEC 15); the last `_MAX_STOPPED` only.
    stopped: list[TurnRecord] = attrs.field(factory=list, metadata={"omit_if_default": True})
    # When `/new` ended this session: the conversation's next message starts a new one, and a
    # restart never maps the conversation back here. The session itself stays on disk.
    ended_at: dt.datetime | None = attrs.field(default=None, metadata={"omit_if_default": True})

    def stop(self, turn: TurnRecord) -> None:
        """`turn` will never run (again): out of the pending turns, kept as `stopped`."""
        turn.status = "stopped"
        if turn in self.turns:
            self.turns.remove(turn)
        self.stopped.append(turn)
        del self.stopped[:-_MAX_STOPPED]

    def heard(self, inbound_id: str) -> bool:
        return inbound_id in self.inbound_ids

    def remember_inbound(self, inbound_id: str) -> None:
        self.inbound_ids.append(inbound_id)
        del self.inbound_ids[:-_MAX_INBOUND_IDS]

    def join(self, turn: TurnRecord, inbound_id: str | None) -> bool:
        """A turn another node accepted for this session (cluster mode) joins its turns; False
        when it is here already, or its platform message is a turn here already."""
        if any(t.id == turn.id for t in self.turns) or (inbound_id is not None and self.heard(inbound_id)):
            return False
        if inbound_id is not None:
            self.remember_inbound(inbound_id)
        self.turns.append(turn)
        return True

    def remember(self, messages: list[dict[str, Any]]) -> None:
        self.history.extend(messages)
        del self.history[:-_MAX_HISTORY]


# Keys a turn no longer has, still found in files written before: read and ignored (written
# back without them). `stallSeconds`: the test endpoint's stall, armed in memory since issue 19.
_RETIRED_TURN_KEYS = ("stallSeconds",)


def record_from_json(data: Any) -> SessionRecord:
    """A stored session (file or row) as a record: the one strict codec, after dropping the
    retired keys it must not reject."""
    if isinstance(data, dict) and isinstance(data.get("turns"), list):
        for turn in data["turns"]:
            if isinstance(turn, dict):
                for key in _RETIRED_TURN_KEYS:
                    turn.pop(key, None)
    return codec.structure(data, SessionRecord)


def _read_record(path: Path) -> SessionRecord:
    # A regular file of bounded size, or quarantined: a FIFO or `/dev/zero` named `<id>.json`
    # wedged the start (issue 25).
    record = record_from_json(json.loads(read_regular(path, MAX_SESSION_FILE_BYTES)))
    # The id names the file the gateway writes back: `"id": "../../EVIL"` would write outside
    # the home, and an id that disagrees with its file name would fork the session in two.
    if not SESSION_ID.fullmatch(record.id) or f"{record.id}.json" != path.name:
        raise ValueError(f"id {record.id!r} is not a plain name matching the file name {path.name!r}")
    return record


@attrs.define
class SessionStore:
    root: Path
    runner: BlockingRunner
    log: EventLog
    # Writes of one session may finish out of order (threads, abandoned writes): each carries
    # a sequence number, and a write older than the one on disk is skipped.
    _seq: Iterator[int] = attrs.Factory(lambda: itertools.count(1))
    _written: dict[str, int] = attrs.Factory(dict)
    _locks: dict[str, threading.Lock] = attrs.Factory(dict)
    _guard: threading.Lock = attrs.Factory(threading.Lock)

    def _path(self, session_id: str) -> Path:
        if not SESSION_ID.fullmatch(session_id):  # never reached from valid input: a last guard
            raise ValueError(f"session id {session_id!r} is not a plain file name")
        return self.root / f"{session_id}.json"

    async def save(self, record: SessionRecord) -> None:
        seq = next(self._seq)
        data = json.dumps(codec.unstructure(record), ensure_ascii=False).encode()
        await self.runner(lambda: self._write_if_newer(record.id, seq, data))

    def _write_if_newer(self, session_id: str, seq: int, data: bytes) -> None:
        with self._guard:
            lock = self._locks.setdefault(session_id, threading.Lock())
        with lock:
            if self._written.get(session_id, 0) > seq:
                return
            atomic_write_bytes(self._path(session_id), data)
            self._written[session_id] = seq

    async def load(self, session_id: str) -> SessionRecord | None:
        """One session read back (an evicted one); None when its file is gone or unreadable
        (an unreadable one is quarantined, as at start-up)."""
        record: SessionRecord | None = await self.runner(lambda: self._load_one_sync(self._path(session_id)))
        return record

    def _load_one_sync(self, path: Path) -> SessionRecord | None:
        try:
            return _read_record(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # any unreadable file: keep it for a person
            self._quarantine(path, exc)
            return None

    async def load_all(self) -> list[SessionRecord]:
        records: list[SessionRecord] = await self.runner(self._load_all_sync)
        return records

    def _load_all_sync(self) -> list[SessionRecord]:
        records: list[SessionRecord] = []
        if not self.root.exists():
            return []
        for path in sorted(self.root.glob("*.json")):
            try:
                records.append(_read_record(path))
            except Exception as exc:  # any unreadable file: keep it for a person, move on
                self._quarantine(path, exc)
        return records

    def _quarantine(self, path: Path, exc: Exception) -> None:
        target = self.root / "quarantine" / f"{path.name}.{os.getpid()}"
        n = 1
        while target.exists():  # never over an earlier quarantined file
            target = self.root / "quarantine" / f"{path.name}.{os.getpid()}.{n}"
            n += 1
        durable_rename(path, target)
        self.log.error("SESSIONS", "Unreadable session file quarantined", file=str(target), error=str(exc)[:200])
