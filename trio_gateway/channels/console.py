"""The `console` channel: one JSON line per delivery in `logs/console.jsonl`, so a newcomer sees
a whole turn with no accounts anywhere. Deduplicates by idempotency key like a real platform:
re-sending a key already in the file is a successful no-op. By key, not by entry id: a turn
re-run after a crash enqueues its reply again under a new entry id but the same key (the turn's
id), and its requester must still see one reply. It needs no account: `KIND.open_standalone`
builds the one adapter every account id reaches."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_gateway.channels.base import OK, AddressRule, ChannelKind, Outcome
from trio_gateway.policy.config import AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.home import Home

ADDRESS = AddressRule(re.compile(r"^\S(?:.*\S)?$", re.DOTALL), "any non-empty address")


def _line_for(entry: DeliveryEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "channel": entry.channel,
        "to": entry.to,
        "accountId": entry.account_id,
        "agentId": entry.agent_id,
        "kind": entry.kind,
        "text": entry.payload.text,
        "idempotencyKey": entry.idempotency_key,
    }


@attrs.define
class SeenIds:
    """Idempotency keys already in the file (a line without one counts by its entry id).
    Reads only what was appended since the last look, so another
    process appending to the same file (`delivery process --once`) is seen too, at little cost."""

    path: Path
    ids: set[str] = attrs.Factory(set)
    offset: int = 0

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as f:
                if f.seek(0, os.SEEK_END) < self.offset:  # truncated by hand: start over
                    self.ids.clear()
                    self.offset = 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            self.ids.clear()
            self.offset = 0
            return
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line is read again once finished
        self.offset += len(complete)
        for raw in complete.splitlines():
            self.ids.update(_id_of(raw))


def _id_of(raw: bytes) -> list[str]:
    try:
        record = json.loads(raw)
    except ValueError:
        return []
    if not isinstance(record, dict):
        return []
    value = record.get("idempotencyKey") or record.get("id")
    return [value] if isinstance(value, str) else []


def _append_once(seen: SeenIds, entry: DeliveryEntry) -> None:
    """Blocking: runs through the channel's `BlockingRunner`. fsync before success, because the queue deletes the
    entry on `ok`: a line lost in a crash after that would be a message lost."""
    _refuse_special(seen.path)
    seen.refresh()
    if entry.idempotency_key in seen.ids:
        return
    seen.path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(_line_for(entry), ensure_ascii=False).encode() + b"\n"
    with seen.path.open("ab") as f:
        if f.tell() > 0 and _ends_torn(seen.path):
            line = b"\n" + line  # a crash left half a line: never glue ours onto it
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    seen.ids.add(entry.idempotency_key)


def _refuse_special(path: Path) -> None:
    """A FIFO (or a device) where the file should be: opening it would block until another
    process opens the other end, maybe forever. Refused as an I/O error, so the send is
    retried later and the attempt never hangs."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, f"{path.name} is not a regular file")


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


@attrs.define
class ConsoleChannel:
    path: Path
    # How the blocking append runs: a worker thread in production, `inline` on a MockClock
    # (which cannot see work in a thread and would jump its clock meanwhile).
    runner: BlockingRunner = in_thread
    seen: SeenIds = attrs.field(init=False)
    lock: trio.Lock = attrs.Factory(trio.Lock)
    name: str = "console"
    deduplicates: bool = True

    def __attrs_post_init__(self) -> None:
        self.seen = SeenIds(self.path)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        async with self.lock:
            try:
                await self.runner(lambda: _append_once(self.seen, entry))
            except OSError as exc:
                return Outcome("retry", f"console: {type(exc).__name__}: {exc.strerror or exc}")
        return OK

    async def aclose(self) -> None:
        return None


def _open_standalone(home: Home, runner: BlockingRunner) -> ConsoleChannel:
    return ConsoleChannel(home.console_path, runner)


# No accounts of its own: an account under `channels.console` says only the common keys.
KIND = ChannelKind(name="console", address=ADDRESS, accounts=AccountKind(), open_standalone=_open_standalone)
