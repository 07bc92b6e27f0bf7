"""The durable delivery queue (SPEC 2, 7): one JSON file per entry, moved between folders.

    delivery-queue/<id>.json                    pending (due at `nextAttemptAt`)
    delivery-queue/inflight/<id>.<pid>.json     claimed by process <pid>, being sent
    delivery-queue/failed/<id>.json             dead letters, with `failedReason`
    delivery-queue/quarantine/<name>            files that did not parse; never deleted

Every state change is an atomic write or a rename (the Maildir discipline, via `store`), so a
crash leaves each entry in exactly one folder with whole content. A claim is a rename, which
only one process can win: the gateway's worker and `delivery process --once` never send one
entry twice at once. The only deletion is `ack`, of an entry the channel accepted.
All disk work runs through the injected `BlockingRunner` (a thread in production, inline on a
MockClock).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs

from trio_gateway.entry import DeliveryEntry, entry_from_json, entry_to_json
from trio_gateway.errors import NotFoundError
from trio_gateway.log import EventLog
from trio_gateway.store import BlockingRunner, atomic_write_json, durable_rename, fsync_dir

T = TypeVar("T")

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS = 80


def _base32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


@attrs.define
class IdGenerator:
    """ULID-style ids (48-bit milliseconds + 80 random bits, Crockford base32): they sort by
    creation time as strings, and within one millisecond by order of creation (the random
    part is incremented, as the ULID spec's monotonic mode does)."""

    _last_ms: int = -1
    _last_rand: int = 0

    def new(self, when: dt.datetime) -> str:
        ms = max(int(when.timestamp() * 1000), 0)
        if ms <= self._last_ms:
            ms, rand = self._last_ms, self._last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big") >> 1  # room to increment
        self._last_ms, self._last_rand = ms, rand
        return _base32(ms, 10) + _base32(rand, 16)


@attrs.frozen
class Claimed:
    """An entry this process has claimed, and the inflight file that holds it."""

    entry: DeliveryEntry
    path: Path


@attrs.frozen
class NotDue:
    """Claim refused: the entry on disk is not due yet (another worker rescheduled it)."""

    next_attempt_at: dt.datetime


class EntryGone(Exception):
    """The entry's file vanished under us (deleted by hand): skip it, it is not an error."""


def _load(path: Path) -> DeliveryEntry:
    """Raises ValueError (with the cattrs detail) for anything that is not a whole entry."""
    try:
        raw = json.loads(path.read_bytes())
        entry = entry_from_json(raw)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"not a delivery entry: {type(exc).__name__}: {exc}") from exc
    if entry.id != path.name.split(".", 1)[0]:
        raise ValueError(f"id {entry.id!r} does not match the file name")
    return entry


def _entry_files(directory: Path) -> list[Path]:
    """Entry files of one folder, oldest id first. Dot-files are `store`'s temporary files."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [directory / n for n in sorted(names) if n.endswith(".json") and not n.startswith(".")]


def _process_start(pid: int) -> tuple[float, bool] | None:
    """(start time since the epoch, is a zombie) of `pid`, from /proc; None off Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime"))
    except (OSError, StopIteration):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    started = int(boot.split()[1]) + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return started, fields[0] == "Z"


def claimer_alive(pid: int, claimed_at: float) -> bool:
    """Is the process that claimed a file at `claimed_at` (its mtime) still running?

    A pid can be reused: a process that started after the claim was written is not the
    claimer. A zombie is dead for our purposes.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, but someone else's
    info = _process_start(pid)
    if info is None:
        return True
    started, zombie = info
    # /proc/stat's btime has one-second resolution: allow two seconds of slack.
    return not zombie and started <= claimed_at + 2.0


@attrs.define
class DeliveryQueue:
    root: Path
    runner: BlockingRunner
    log: EventLog
    pid: int = attrs.Factory(os.getpid)
    _ids: IdGenerator = attrs.Factory(IdGenerator)
    # Ids this object has claimed and not yet finished: `recover()` must not take them back
    # even though their inflight files carry our own (alive) pid.
    _claimed: set[str] = attrs.Factory(set)
    # Parsed pending files by name, keyed on (mtime_ns, size): a rescan re-reads only changes.
    _cache: dict[str, tuple[tuple[int, int], DeliveryEntry]] = attrs.Factory(dict)

    @property
    def inflight_dir(self) -> Path:
        return self.root / "inflight"

    @property
    def failed_dir(self) -> Path:
        return self.root / "failed"

    @property
    def quarantine_dir(self) -> Path:
        return self.root / "quarantine"

    def pending_path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}.json"

    def new_id(self, when: dt.datetime) -> str:
        return self._ids.new(when)

    async def _run(self, fn: Callable[[], T]) -> T:
        return await self.runner(fn)

    # --- writing new entries ----------------------------------------------------------------

    async def enqueue(self, entry: DeliveryEntry) -> None:
        """Write a new pending entry durably; when this returns, a crash cannot lose it."""
        await self._run(lambda: atomic_write_json(self.pending_path(entry.id), entry_to_json(entry)))

    # --- reading --------------------------------------------------------------------------

    def _scan_sync(self) -> list[DeliveryEntry]:
        entries: list[DeliveryEntry] = []
        seen: set[str] = set()
        for path in _entry_files(self.root):
            try:
                st = path.stat()
                key = (st.st_mtime_ns, st.st_size)
                cached = self._cache.get(path.name)
                entry = cached[1] if cached is not None and cached[0] == key else _load(path)
            except FileNotFoundError:
                continue  # claimed or deleted while we listed
            except ValueError as exc:
                self._quarantine_sync(path, str(exc))
                continue
            self._cache[path.name] = (key, entry)
            seen.add(path.name)
            entries.append(entry)
        for stale in self._cache.keys() - seen:
            del self._cache[stale]
        return entries

    async def list_pending(self) -> list[DeliveryEntry]:
        """Pending entries, oldest first; unparseable files are quarantined on the way."""
        return await self._run(self._scan_sync)

    def _read_folder_sync(self, directory: Path) -> list[DeliveryEntry]:
        entries = []
        for path in _entry_files(directory):
            with contextlib.suppress(FileNotFoundError, ValueError):
                entries.append(_load(path))
        return entries

    async def list_inflight(self) -> list[DeliveryEntry]:
        return await self._run(lambda: self._read_folder_sync(self.inflight_dir))

    async def list_failed(self) -> list[DeliveryEntry]:
        return await self._run(lambda: self._read_folder_sync(self.failed_dir))

    async def due(self, now: dt.datetime) -> list[DeliveryEntry]:
        return [e for e in await self.list_pending() if e.next_attempt_at <= now]

    # --- claiming -------------------------------------------------------------------------

    def _claim_sync(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        path = self.inflight_dir / f"{entry_id}.{self.pid}.json"
        try:
            durable_rename(self.pending_path(entry_id), path)
        except FileNotFoundError:
            return None  # another worker has it, or a person deleted it
        try:
            entry = _load(path)
        except ValueError as exc:
            self._quarantine_sync(path, str(exc))
            return None
        if entry.next_attempt_at > now:
            durable_rename(path, self.pending_path(entry_id))
            return NotDue(entry.next_attempt_at)
        self._claimed.add(entry_id)
        return Claimed(entry, path)

    async def claim(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        """Take a due entry for sending; None when it is gone (claimed elsewhere, deleted)."""
        return await self._run(lambda: self._claim_sync(entry_id, now))

    def _rewrite_sync(self, claimed: Claimed, entry: DeliveryEntry) -> None:
        if not claimed.path.exists():
            raise EntryGone(claimed.entry.id)
        atomic_write_json(claimed.path, entry_to_json(entry))

    async def mark_sending(self, claimed: Claimed, now: dt.datetime) -> Claimed:
        """Record `sendStartedAt` before the send, so a crash mid-send is recognisable."""
        entry = attrs.evolve(claimed.entry, send_started_at=now)
        await self._run(lambda: self._rewrite_sync(claimed, entry))
        return Claimed(entry, claimed.path)

    # --- finishing a claim ----------------------------------------------------------------

    def _finish_sync(self, claimed: Claimed, entry: DeliveryEntry | None, dest: Path) -> bool:
        """Move the claimed file to `dest`, rewritten to `entry` first when given. False when
        a person deleted it meanwhile: their deletion stands."""
        self._claimed.discard(claimed.entry.id)
        try:
            if entry is not None:
                self._rewrite_sync(claimed, entry)
            durable_rename(claimed.path, dest)
        except (FileNotFoundError, EntryGone):
            self.log.warn("DELIVERY", f"Entry {claimed.entry.id} vanished while claimed (deleted by hand?); skipped")
            return False
        self._cache.pop(dest.name, None)
        return True

    async def ack(self, claimed: Claimed) -> None:
        """The channel accepted the entry: the one place an entry file is deleted."""

        def work() -> None:
            self._claimed.discard(claimed.entry.id)
            with contextlib.suppress(FileNotFoundError):
                claimed.path.unlink()
                fsync_dir(claimed.path.parent)

        await self._run(work)

    async def retry_later(self, claimed: Claimed, last_error: str, next_at: dt.datetime) -> DeliveryEntry:
        """A failed attempt that will be retried: counted, and back to pending."""
        entry = attrs.evolve(
            claimed.entry,
            attempts=claimed.entry.attempts + 1,
            last_error=last_error,
            next_attempt_at=next_at,
            send_started_at=None,
        )
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    async def hold(self, claimed: Claimed, reason: str, next_at: dt.datetime) -> DeliveryEntry:
        """Back to pending untouched but for the reason and the time: not a counted attempt
        (the channel's account is paused, nothing is wrong with the entry)."""
        entry = attrs.evolve(claimed.entry, last_error=reason, next_attempt_at=next_at, send_started_at=None)
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    async def release(self, claimed: Claimed) -> None:
        """A drain or a crash cut the attempt: back to pending as it is, attempts unchanged.

        `sendStartedAt` stays: the send may have reached the channel, so the next send is
        logged as a possible duplicate where the channel cannot deduplicate.
        """
        await self._run(lambda: self._finish_sync(claimed, None, self.pending_path(claimed.entry.id)))

    async def dead_letter(self, claimed: Claimed, reason: str, now: dt.datetime) -> DeliveryEntry:
        entry = attrs.evolve(claimed.entry, failed_reason=reason, failed_at=now, send_started_at=None)
        await self._run(lambda: self._finish_sync(claimed, entry, self.failed_dir / f"{entry.id}.json"))
        return entry

    async def reroute(
        self, claimed: Claimed, *, channel: str, to: str, account_id: str | None, now: dt.datetime, why: str
    ) -> DeliveryEntry:
        """`delivery repair`: point a claimed entry at a new address, a fresh start."""
        entry = attrs.evolve(
            claimed.entry,
            channel=channel,
            to=to,
            account_id=account_id,
            attempts=0,
            next_attempt_at=now,
            retried_at=now,
            send_started_at=None,
            last_error=why,
        )
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    # --- operator actions and recovery ----------------------------------------------------

    def _retry_dead_sync(self, entry_id: str, now: dt.datetime) -> DeliveryEntry:
        path = self.failed_dir / f"{entry_id}.json"
        try:
            entry = _load(path)
        except FileNotFoundError:
            raise NotFoundError(f"no dead letter with id {entry_id}") from None
        entry = attrs.evolve(
            entry,
            attempts=0,
            next_attempt_at=now,
            retried_at=now,
            failed_reason=None,
            failed_at=None,
            send_started_at=None,
        )
        atomic_write_json(path, entry_to_json(entry))
        durable_rename(path, self.pending_path(entry_id))
        return entry

    async def retry_dead(self, entry_id: str, now: dt.datetime) -> DeliveryEntry:
        """`delivery retry ID`: a dead letter back to pending, attempts and budget reset."""
        return await self._run(lambda: self._retry_dead_sync(entry_id, now))

    def _remove_dead_temporaries_sync(self) -> None:
        # `.<id>.<pid>.json.XXXX.tmp`: a rewrite cut by a crash. The claimed file beside it is
        # whole (the rename never happened), so removing the temporary loses nothing.
        try:
            names = [n for n in os.listdir(self.inflight_dir) if n.startswith(".") and n.endswith(".tmp")]
        except FileNotFoundError:
            return
        for name in names:
            pid_text = name[1:].split(".")[1]
            path = self.inflight_dir / name
            with contextlib.suppress(FileNotFoundError, ValueError):
                if int(pid_text) != self.pid and not claimer_alive(int(pid_text), path.stat().st_mtime):
                    path.unlink()

    def _recover_sync(self) -> list[str]:
        self._remove_dead_temporaries_sync()
        recovered = []
        for path in _entry_files(self.inflight_dir):
            entry_id, _, rest = path.name.partition(".")
            pid_text = rest.removesuffix(".json")
            if not pid_text.isdigit():
                self._quarantine_sync(path, "inflight file name is not <id>.<pid>.json")
                continue
            pid = int(pid_text)
            if pid == self.pid and entry_id in self._claimed:
                continue
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if pid != self.pid and claimer_alive(pid, mtime):
                continue
            with contextlib.suppress(FileNotFoundError):
                durable_rename(path, self.pending_path(entry_id))
                recovered.append(entry_id)
                self.log.warn("DELIVERY", f"Recovered entry {entry_id} claimed by pid {pid}, which is gone")
        return recovered

    async def recover(self) -> list[str]:
        """Move entries claimed by dead processes (or by an earlier life of this one) back to
        pending. Their `sendStartedAt`, when set, marks a send that may have happened."""
        return await self._run(self._recover_sync)

    def _quarantine_sync(self, path: Path, reason: str) -> None:
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        dest = self.quarantine_dir / path.name
        n = 1
        while dest.exists():
            dest = self.quarantine_dir / f"{path.name}.{n}"
            n += 1
        with contextlib.suppress(FileNotFoundError):
            durable_rename(path, dest)
            self.log.warn("QUARANTINE", f"Moved unparseable {path.name} to quarantine/{dest.name}: {reason}")
        self._cache.pop(path.name, None)
