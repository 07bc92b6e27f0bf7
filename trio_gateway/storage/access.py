"""`access/<channel>/<accountId>.json`: the file-backed pairing book (SPEC 15, "Access").

    {"approvals": [{"sender": "42", "approvedAt": "…"}],
     "pending": [{"sender": "77", "code": "K7QX2MPA", "createdAt": "…", "expiresAt": "…"}],
     "codeMessages": {"77": "…"}}

One file per account, replaced atomically (temporary file, fsync, rename). Every change is a
read-modify-write done whole inside one worker thread under a `threading.Lock` per file, so a
thread abandoned by a cancelled caller (a hung disk) still finishes before the next change
reads the file: no update is lost. Callers queue for a file on a `trio.Lock` first, so waiting
callers hold no thread. A file that is not a readable account record is quarantined under
`access/quarantine/` (never deleted), logged as an error, and the account starts empty: its
senders are asked to pair again rather than being let in on a file nobody can read.

`codeMessages` remembers when each sender last got a code message, so "one per hour" holds even
after that sender's code was approved and revoked, or expired.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from trio_gateway.errors import BadRequestError, InsufficientStorageError, NotFoundError
from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.policy.pairing import (
    CODE_ALPHABET,
    CODE_LENGTH,
    CODE_MESSAGE_EVERY,
    CODE_TTL,
    MAX_PENDING_PER_ACCOUNT,
    Approval,
    PendingCode,
)
from trio_gateway.policy.strict_json import bad_text
from trio_gateway.storage.atomic import BlockingRunner, atomic_write_bytes, read_regular
from trio_gateway.storage.disk import is_no_space
from trio_gateway.storage.entry_files import quarantine

R = TypeVar("R")

# Channel and account ids name a folder and a file: a plain name, never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}")
# Tens of thousands of approvals fit; anything larger is not an account record of ours.
MAX_ACCESS_FILE_BYTES = 8 * 1024 * 1024
# How long `is_approved` answers from the record it last read without looking at the file again.
# A change made through this book is seen at once (it bumps the file's version); one made
# outside it (by hand, or a CLI that found no gateway while one was starting) within this.
RECHECK_SECONDS = 1.0


def new_code() -> str:
    """A pairing code from the OS's CSPRNG: 32^8 = 2^40 codes, guessed only by luck."""
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(code: str) -> str:
    """What an operator typed, as stored: case and surrounding space do not matter."""
    return code.strip().upper()


def storable(sender: str) -> bool:
    """A sender id that can be written (file or row): not empty, valid Unicode. Anything else
    (a lone surrogate from a hostile event) is never approved nor given a code, and never
    reaches the file, where it would make the whole account unreadable."""
    return bool(sender) and bad_text(sender) is None


def check_name(what: str, value: str) -> str:
    if not PLAIN_NAME.fullmatch(value):
        raise BadRequestError(f"{what} {value!r} is not a plain name (letters, digits, '_', '.', '@', '-')")
    return value


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat()


def _when(value: Any) -> dt.datetime:
    # The one strict reading of a stored time (ISO 8601 with an offset), as every record has.
    return codec.structure(value, dt.datetime)


@attrs.define
class AccountRecord:
    """One account's approvals, pending codes and code messages, as read from its file."""

    approvals: dict[str, dt.datetime] = attrs.Factory(dict)
    pending: list[tuple[str, str, dt.datetime, dt.datetime]] = attrs.Factory(list)  # sender, code, created, expires
    code_messages: dict[str, dt.datetime] = attrs.Factory(dict)

    @classmethod
    def from_json(cls, raw: Any) -> AccountRecord:
        """Raises ValueError (or KeyError, TypeError) for anything that is not a whole record."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        record = cls()
        for item in raw.get("approvals", []):
            record.approvals[_sender(item["sender"])] = _when(item["approvedAt"])
        for item in raw.get("pending", []):
            code = item["code"]
            if not isinstance(code, str):
                raise ValueError(f"not a code: {code!r}")
            record.pending.append((_sender(item["sender"]), code, _when(item["createdAt"]), _when(item["expiresAt"])))
        for sender, at in raw.get("codeMessages", {}).items():
            record.code_messages[_sender(sender)] = _when(at)
        return record

    def to_json(self) -> dict[str, Any]:
        return {
            "approvals": [{"sender": s, "approvedAt": _iso(at)} for s, at in self.approvals.items()],
            "pending": [
                {"sender": s, "code": c, "createdAt": _iso(made), "expiresAt": _iso(ends)}
                for s, c, made, ends in self.pending
            ],
            "codeMessages": {s: _iso(at) for s, at in self.code_messages.items()},
        }

    def forget_past(self, now: dt.datetime) -> None:
        """Expired codes and code messages older than the period go: they rule nothing now."""
        self.pending = [p for p in self.pending if p[3] > now]
        self.code_messages = {s: at for s, at in self.code_messages.items() if at + CODE_MESSAGE_EVERY > now}


def _sender(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"not a sender id: {value!r}")
    return value


@attrs.define(eq=False)
class FileAccessBook:
    """The `PairingBook` of a gateway on files (one gateway per home)."""

    root: Path  # <home>/access
    runner: BlockingRunner
    log: EventLog
    # A seam for tests: where codes come from.
    make_code: Callable[[], str] = new_code
    _trio_locks: dict[Path, trio.Lock] = attrs.Factory(dict)
    _thread_locks: dict[Path, threading.Lock] = attrs.Factory(dict)
    _guard: threading.Lock = attrs.Factory(threading.Lock)
    # The last record read of each file with that file's identity (inode, size, mtime): the
    # access check asks `is_approved` of every message, and an unchanged file is not parsed
    # again. Every write here is a new file renamed over the old, so a new inode: no change
    # made by this book can look unchanged.
    _seen: dict[Path, tuple[tuple[int, int, int], AccountRecord]] = attrs.Factory(dict)
    # The access check's fast path, on the Trio thread: (when read, the file's version then,
    # the record). Every message asks; a thread hop and a `stat` for each cost 6-15 % of an
    # inbound turn on two loaded cores (`bench_access.py`), an answer from here nothing.
    _fresh: dict[Path, tuple[float, int, AccountRecord]] = attrs.Factory(dict)
    # Bumped on the Trio thread before and after each change of a file by this book: a read
    # that overlapped a change is not kept in `_fresh`.
    _version: dict[Path, int] = attrs.Factory(dict)

    def path(self, channel: str, account_id: str) -> Path:
        return self.root / check_name("channel", channel) / f"{check_name('accountId', account_id)}.json"

    # --- the access check's two questions ---------------------------------------------------------

    async def is_approved(self, channel: str, account_id: str, sender: str) -> bool:
        path = self.path(channel, account_id)
        if not storable(sender):
            return False
        now, version = trio.current_time(), self._version.get(path, 0)
        fresh = self._fresh.get(path)
        if fresh is not None and fresh[1] == version and now - fresh[0] < RECHECK_SECONDS:
            return sender in fresh[2].approvals
        record = await self.runner(lambda: self._read_known_sync(path))
        if self._version.get(path, 0) == version:
            self._fresh[path] = (now, version, record)
        return sender in record.approvals

    async def offer_code(self, channel: str, account_id: str, sender: str, now: dt.datetime) -> PendingCode | None:
        path = self.path(channel, account_id)
        if not storable(sender):
            return None

        def change(record: AccountRecord) -> PendingCode | None:
            if sender in record.approvals or sender in record.code_messages:
                return None
            if len(record.pending) >= MAX_PENDING_PER_ACCOUNT:
                return None
            code = self._fresh_code({p[1] for p in record.pending})
            record.pending = [p for p in record.pending if p[0] != sender]
            record.pending.append((sender, code, now, now + CODE_TTL))
            record.code_messages[sender] = now
            return PendingCode(channel, account_id, sender, code, now, now + CODE_TTL)

        offered = await self._change(path, now, change)
        if offered is not None:
            self.log.info("ACCESS", "Pairing code offered", channel=channel, account=account_id, sender=sender)
        return offered

    def _fresh_code(self, taken: set[str]) -> str:
        for _ in range(4):
            code = self.make_code()
            if code not in taken:
                return code
        raise RuntimeError("no fresh pairing code could be made")  # 4 collisions in 2^40: a broken seam

    # --- the approval surfaces --------------------------------------------------------------------

    async def pending(self, channel: str | None, now: dt.datetime) -> list[PendingCode]:
        records = await self.runner(lambda: list(self._read_all_sync(channel)))
        codes = [
            PendingCode(ch, account, sender, code, made, ends)
            for ch, account, record in records
            for sender, code, made, ends in record.pending
            if ends > now
        ]
        return sorted(codes, key=lambda p: (p.created_at, p.channel, p.account_id, p.sender))

    async def approvals(self, channel: str | None) -> list[Approval]:
        records = await self.runner(lambda: list(self._read_all_sync(channel)))
        found = [
            Approval(ch, account, sender, at)
            for ch, account, record in records
            for sender, at in record.approvals.items()
        ]
        return sorted(found, key=lambda a: (a.approved_at, a.channel, a.account_id, a.sender))

    async def approve(self, channel: str, code: str, now: dt.datetime) -> Approval:
        wanted = normalise_code(code)
        for pending in await self.pending(check_name("channel", channel), now):
            if pending.code != wanted:
                continue

            def change(record: AccountRecord, pending: PendingCode = pending) -> Approval | None:
                if not any(p[1] == wanted and p[3] > now for p in record.pending):
                    return None  # approved or expired between the look and the lock
                record.pending = [p for p in record.pending if p[1] != wanted]
                record.approvals[pending.sender] = now
                return Approval(channel, pending.account_id, pending.sender, now)

            approval = await self._change(self.path(channel, pending.account_id), now, change)
            if approval is not None:
                self.log.info(
                    "ACCESS", "Sender approved", channel=channel, account=approval.account_id, sender=approval.sender
                )
                return approval
        raise NotFoundError(f"no pending pairing code {wanted!r} on channel {channel!r} (unknown, expired or approved)")

    async def revoke(self, channel: str, account_id: str, sender: str) -> bool:
        path = self.path(channel, account_id)

        def change(record: AccountRecord) -> bool:
            return record.approvals.pop(sender, None) is not None

        revoked = await self._change(path, None, change)
        if revoked:
            self.log.info("ACCESS", "Approval revoked", channel=channel, account=account_id, sender=sender)
        return revoked

    # --- on disk ----------------------------------------------------------------------------------

    async def _change(self, path: Path, now: dt.datetime | None, change: Callable[[AccountRecord], R]) -> R:
        """Read, change and write one account's file as one step of one thread; written only
        when `change` changed the record (a refused offer costs no fsync)."""

        def step() -> R:
            with self._thread_lock(path):
                record = self._read_sync(path)
                before = record.to_json()
                if now is not None:
                    record.forget_past(now)
                result = change(record)
                after = record.to_json()
                if after != before:
                    data = json.dumps(after, ensure_ascii=False, indent=1).encode() + b"\n"
                    if len(data) > MAX_ACCESS_FILE_BYTES:  # past the cap it would read as corrupt
                        raise InsufficientStorageError(
                            f"{_shown(path)} would pass its {MAX_ACCESS_FILE_BYTES} bytes; revoke approvals first"
                        )
                    atomic_write_bytes(path, data, mode=0o600)
                    self._seen.pop(path, None)
                return result

        async with self._trio_locks.setdefault(path, trio.Lock()):
            self._version[path] = self._version.get(path, 0) + 1
            try:
                return await self.runner(step)
            except OSError as exc:
                if is_no_space(exc):  # as the HTTP edge answers a full disk: 507, nothing changed
                    raise InsufficientStorageError(f"{_shown(path)} not written: {exc.strerror}") from None
                raise
            finally:
                # Again after: a read that began during the change kept the version of its start.
                self._version[path] += 1

    def _thread_lock(self, path: Path) -> threading.Lock:
        with self._guard:
            return self._thread_locks.setdefault(path, threading.Lock())

    def _read_known_sync(self, path: Path) -> AccountRecord:
        """`_read_sync` for a question that only reads: the record parsed last while the file
        is still that one. Replaced between the `stat` and the read, the newer record is kept
        under the older identity, so the next call reads it again: never a stale answer."""
        try:
            info = os.stat(path)
        except FileNotFoundError:
            return AccountRecord()
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        known = self._seen.get(path)
        if known is not None and known[0] == identity:
            return known[1]
        record = self._read_sync(path)
        self._seen[path] = (identity, record)
        return record

    def _read_sync(self, path: Path) -> AccountRecord:
        try:
            return AccountRecord.from_json(json.loads(read_regular(path, MAX_ACCESS_FILE_BYTES)))
        except FileNotFoundError:
            return AccountRecord()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self._quarantine(path, exc)
            return AccountRecord()

    def _quarantine(self, path: Path, exc: BaseException) -> None:
        name = f"{path.parent.name}.{path.name}"
        with contextlib.suppress(OSError):  # a read-only disk: it stays in place, still logged
            quarantine(self.root / "quarantine", path, f"{type(exc).__name__}: {exc}", self.log, name=name)
        self.log.error(
            "ACCESS",
            "Unreadable pairing file quarantined; the account starts with no approvals",
            file=str(path),
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
        )

    def _read_all_sync(self, channel: str | None) -> Iterator[tuple[str, str, AccountRecord]]:
        channels = [check_name("channel", channel)] if channel is not None else _plain_entries(self.root, dirs=True)
        for ch in channels:
            for name in _plain_entries(self.root / ch, dirs=False):
                account = name.removesuffix(".json")
                yield ch, account, self._read_sync(self.root / ch / name)


def _shown(path: Path) -> str:
    """`access/<channel>/<account>.json`: where the file is, without the home's own path."""
    return f"access/{path.parent.name}/{path.name}"


def _plain_entries(directory: Path, *, dirs: bool) -> list[str]:
    """Channel folders (`dirs`) or account files of `directory`, sorted; temporary dot-files,
    `quarantine/` and stray names are not ours."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    if dirs:
        return [n for n in names if n != "quarantine" and PLAIN_NAME.fullmatch(n) and (directory / n).is_dir()]
    return [n for n in names if n.endswith(".json") and PLAIN_NAME.fullmatch(n.removesuffix(".json"))]
