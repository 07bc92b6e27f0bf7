"""The durable delivery queue (SPEC 2, 7): one JSON file per entry, moved between folders.

    delivery-queue/<id>.json                    pending (due at `nextAttemptAt`)
    delivery-queue/inflight/<id>.<pid>.json     claimed by process <pid>, not sent yet
    delivery-queue/inflight/<id>.<pid>.<ms>.json   ... and its send started at <ms> (epoch)
    delivery-queue/failed/<id>.json             dead letters, with `failedReason`
    delivery-queue/quarantine/<name>            files that did not parse; never deleted

Every state change is an atomic write or a rename (the Maildir discipline, via `store`), so a
crash leaves each entry in exactly one folder with whole content. A claim is a rename, which
only one process can win: the gateway's worker and `delivery process --once` never send one
entry twice at once. The only deletion is `ack`, of an entry the channel accepted.
All disk work runs through the injected `BlockingRunner` (a thread in production, inline on a
MockClock).

The hot path costs one file fsync and three directory fsyncs per entry, each directory fsync
shared by every entry in the same batch (`GroupCommit`): enqueue (file fsync each, renames, one
dir fsync for the batch), claim-to-send (renames, one dir fsync for the batch), ack (unlinks, one
dir fsync for the batch). `sendStartedAt` is
recorded by the second rename, into a name that carries the time: a rename is all a durable
mark needs, where a rewrite needs a file fsync too. The claim's own rename is not synced: a
claim lost in a crash leaves the entry pending, which is what recovery makes of it anyway.

One entry's file (names, parsing, quarantine) is `entry_files.py`; taking back the claims of
dead processes is `recovery.py`; the group commit is `group_commit.py`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import attrs

from trio_gateway.errors import NotFoundError
from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.atomic import (
    BlockingRunner,
    atomic_create_bytes,
    atomic_write_bytes,
    durable_rename,
    fsync_dir,
)
from trio_gateway.storage.base import Claimed, NotDue
from trio_gateway.storage.entry_files import (
    EntryGone,
    entry_bytes,
    entry_files,
    inflight_name,
    load_entry,
    parse_entry,
    parse_inflight_name,
    quarantine,
    read_entry_file,
)
from trio_gateway.storage.group_commit import GroupCommit
from trio_gateway.storage.ids import IdGenerator
from trio_gateway.storage.recovery import recover_inflight

_T = TypeVar("_T")

# Entries this process wrote and has not claimed yet, kept with their bytes so the claim that
# normally follows within milliseconds skips the parse. Bounded: past it, claims just parse.
_FRESH_CACHE_LIMIT = 4096


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
    # Entries this object enqueued, with the exact bytes written: a claim that reads the same
    # bytes back skips the parse. Comparing bytes, not timestamps, so never stale.
    _fresh: dict[str, tuple[bytes, DeliveryEntry]] = attrs.Factory(dict)
    # Ids whose last enqueue ended without a known outcome: a retry looks on disk first.
    _uncertain: set[str] = attrs.Factory(set)
    # Claims whose caller left before it got them (`let_go`): a thread still finishing one
    # drops it from `_claimed` when it sees its id here, so `recover()` can take it back.
    _let_go: set[str] = attrs.Factory(set)
    _sends: GroupCommit[tuple[str, dt.datetime], Claimed | NotDue | None] = attrs.field(init=False)
    _acks: GroupCommit[Claimed, None] = attrs.field(init=False)
    _enqueues: GroupCommit[DeliveryEntry, None] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._enqueues = GroupCommit(lambda entries: self._run(lambda: self._enqueue_batch_sync(entries)))
        self._sends = GroupCommit(lambda items: self._run(lambda: self._claim_to_send_sync(items)))
        self._acks = GroupCommit(lambda claims: self._run(lambda: self._ack_sync(claims)))

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

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await self.runner(fn)

    # --- writing new entries ----------------------------------------------------------------

    def _already_written_sync(self, entry_id: str) -> bool:
        """Is this entry on disk in any folder? Asked only for an id whose earlier enqueue
        ended with an unknown outcome, so the hot path never lists `inflight/`."""
        if self.pending_path(entry_id).exists() or (self.failed_dir / f"{entry_id}.json").exists():
            return True
        try:
            return any(n.startswith(f"{entry_id}.") for n in os.listdir(self.inflight_dir))
        except FileNotFoundError:
            return False

    def _enqueue_batch_sync(self, entries: list[DeliveryEntry]) -> list[None]:
        for entry in entries:
            if entry.id in self._uncertain and self._already_written_sync(entry.id):
                continue  # a retry of a write that did happen: enqueue is idempotent by id
            data = entry_bytes(entry)
            # Ids are unique: no one else writes the name. Each file is fsynced before its
            # rename; the folder once, after every rename of the batch, before any caller returns.
            atomic_create_bytes(self.pending_path(entry.id), data, sync_dir=False)
            if len(self._fresh) < _FRESH_CACHE_LIMIT:
                self._fresh[entry.id] = (data, entry)
        fsync_dir(self.root)
        return [None] * len(entries)

    async def enqueue(self, entry: DeliveryEntry) -> None:
        """Write a new pending entry durably; when this returns, a crash cannot lose it.
        Group-committed with concurrent enqueues: one thread hand-off and one directory fsync.

        Raises `OutcomeUnknown` when the disk did not answer in time, `OSError` when it failed
        (ENOSPC): either way the caller may retry with the same entry, which is written at
        most once (a retry first looks for it on disk). An entry acked in between would be
        written again; the channels dedupe by idempotency key."""
        try:
            await self._enqueues.submit(entry)
        except BaseException:
            self._uncertain.add(entry.id)
            raise
        self._uncertain.discard(entry.id)

    # --- reading --------------------------------------------------------------------------

    def _read_cached_sync(self, path: Path) -> DeliveryEntry:
        """Raises FileNotFoundError, ValueError."""
        st = path.stat()
        key = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path.name)
        entry = cached[1] if cached is not None and cached[0] == key else load_entry(path)
        self._cache[path.name] = (key, entry)
        return entry

    def _scan_sync(self) -> list[DeliveryEntry]:
        entries: list[DeliveryEntry] = []
        seen: set[str] = set()
        for path in entry_files(self.root):
            try:
                entry = self._read_cached_sync(path)
            except FileNotFoundError:
                continue  # claimed or deleted while we listed
            except ValueError as exc:
                self._quarantine_sync(path, str(exc))
                continue
            seen.add(path.name)
            entries.append(entry)
        for stale in self._cache.keys() - seen:
            del self._cache[stale]
        return entries

    async def list_pending(self) -> list[DeliveryEntry]:
        """Pending entries, oldest first; unparseable files are quarantined on the way."""
        return await self._run(self._scan_sync)

    def _pending_ids_sync(self) -> list[str]:
        # Names only, no `Path` per file: at 100,000 entries the objects cost more than listdir.
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n[:-5] for n in names if n.endswith(".json") and not n.startswith("."))

    async def pending_ids(self) -> list[str]:
        """Ids of the pending files, oldest first, from the directory listing alone: what the
        worker schedules from at start-up, parsing each entry only when it claims it."""
        return await self._run(self._pending_ids_sync)

    def _peek_sync(self, entry_ids: list[str]) -> dict[str, DeliveryEntry]:
        found: dict[str, DeliveryEntry] = {}
        for entry_id in entry_ids:
            with contextlib.suppress(FileNotFoundError, ValueError):  # a claim deals with those
                found[entry_id] = self._read_cached_sync(self.pending_path(entry_id))
        for stale in self._cache.keys() - {f"{i}.json" for i in found}:
            del self._cache[stale]
        return found

    async def peek(self, entry_ids: list[str]) -> dict[str, DeliveryEntry]:
        """These pending entries as on disk, read without claiming (a file that changed since
        the last peek is re-read); missing and unparseable ones are left out."""
        return await self._run(lambda: self._peek_sync(entry_ids))

    def _read_folder_sync(self, directory: Path) -> list[DeliveryEntry]:
        entries = []
        for path in entry_files(directory):
            with contextlib.suppress(FileNotFoundError, ValueError):
                entry = load_entry(path)
                parsed = parse_inflight_name(path.name) if directory == self.inflight_dir else None
                if parsed is not None and parsed[2] is not None:
                    entry = attrs.evolve(entry, send_started_at=parsed[2])  # recorded by the name
                entries.append(entry)
        return entries

    async def list_inflight(self) -> list[DeliveryEntry]:
        return await self._run(lambda: self._read_folder_sync(self.inflight_dir))

    async def list_failed(self) -> list[DeliveryEntry]:
        return await self._run(lambda: self._read_folder_sync(self.failed_dir))

    async def due(self, now: dt.datetime) -> list[DeliveryEntry]:
        return [e for e in await self.list_pending() if e.next_attempt_at <= now]

    # --- claiming -------------------------------------------------------------------------

    def _read_claimed_sync(self, entry_id: str, path: Path) -> DeliveryEntry:
        """The entry we just renamed to `path`; its own bytes when we wrote them (no parse)."""
        data = read_entry_file(path)
        fresh = self._fresh.pop(entry_id, None)
        if fresh is not None and fresh[0] == data:
            return fresh[1]
        return parse_entry(data, path.name)

    def _claim_sync(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        # Marked ours BEFORE the rename: from the instant the inflight file exists, a
        # concurrent `recover()` (the rescan, in another thread) sees it as a live claim of
        # this process and leaves it alone. Marked after, it could move our own fresh claim
        # back to pending between the rename and the read.
        self._claimed.add(entry_id)
        try:
            result = self._claim_marked_sync(entry_id, now)
        except BaseException:
            self._claimed.discard(entry_id)
            raise
        if not isinstance(result, Claimed) or entry_id in self._let_go:
            self._claimed.discard(entry_id)  # checked after the add: see `let_go`
        return result

    def _claim_marked_sync(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        # Not synced: a claim lost in a crash leaves the entry pending, as recovery would.
        path = self.inflight_dir / inflight_name(entry_id, self.pid, None)
        try:
            os.rename(self.pending_path(entry_id), path)
        except FileNotFoundError:
            if not self.inflight_dir.exists():
                self.inflight_dir.mkdir(parents=True, exist_ok=True)
                return self._claim_marked_sync(entry_id, now)
            return None  # another worker has it, or a person deleted it
        try:
            entry = self._read_claimed_sync(entry_id, path)
        except FileNotFoundError:
            return None  # deleted by hand the instant after our rename
        except ValueError as exc:
            self._quarantine_sync(path, str(exc), name=f"{entry_id}.json")
            return None
        if entry.next_attempt_at > now:
            os.rename(path, self.pending_path(entry_id))  # either place recovers to pending
            return NotDue(entry.next_attempt_at, entry.channel, entry.account_id)
        return Claimed(entry, path)

    async def claim(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        """Take a due entry (not for sending yet); None when it is gone (claimed elsewhere,
        deleted)."""
        self._let_go.discard(entry_id)
        return await self._run(lambda: self._claim_sync(entry_id, now))

    def holds(self, entry_id: str) -> bool:
        """Is this entry claimed by this process and not finished (acked, moved) yet?"""
        return entry_id in self._claimed

    def let_go(self, entry_id: str) -> None:
        """Stop holding a claim its caller cannot finish: the caller was cut from the claim's
        batch (whose thread may still be claiming it), or its settling never completed. The
        inflight file then looks like a dead claimer's, and the next `recover()` (every
        rescan) moves it back to pending: delivered late, never lost, never stuck. The id is
        marked before it is dropped, and a claiming thread checks the mark after adding it,
        so whichever runs second leaves it dropped."""
        self._let_go.add(entry_id)
        self._claimed.discard(entry_id)

    def _mark_sync(self, claimed: Claimed, now: dt.datetime) -> Claimed:
        """Rename to the name that records the send's start; the caller syncs the folder."""
        entry = claimed.entry
        path = self.inflight_dir / inflight_name(entry.id, self.pid, now)
        try:
            os.rename(claimed.file, path)
        except FileNotFoundError:
            self._claimed.discard(entry.id)
            raise EntryGone(entry.id) from None
        return Claimed(attrs.evolve(entry, send_started_at=now), path, resend_of=entry.send_started_at)

    def _claim_to_send_sync(self, items: list[tuple[str, dt.datetime]]) -> list[Claimed | NotDue | None]:
        results: list[Claimed | NotDue | None] = []
        for entry_id, now in items:
            claimed = self._claim_sync(entry_id, now)
            if isinstance(claimed, Claimed):
                try:
                    claimed = self._mark_sync(claimed, now)
                except EntryGone:
                    claimed = None  # deleted by hand between the two renames
            results.append(claimed)
        if any(isinstance(r, Claimed) for r in results):
            fsync_dir(self.inflight_dir)  # one fsync makes the whole batch's marks durable
        return results

    async def claim_to_send(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None:
        """`claim`, then record `sendStartedAt` (a rename), group-committed with concurrent
        callers: when this returns a `Claimed`, its `sendStartedAt` is on disk and the send may
        start. A caller cut from the wait (cancelled, `OutcomeUnknown`) must `let_go` of the id."""
        self._let_go.discard(entry_id)
        return await self._sends.submit((entry_id, now))

    # --- finishing a claim ----------------------------------------------------------------

    def _rewrite_sync(self, claimed: Claimed, entry: DeliveryEntry) -> None:
        if not claimed.file.exists():
            raise EntryGone(claimed.entry.id)
        atomic_write_bytes(claimed.file, entry_bytes(entry))

    def _finish_sync(self, claimed: Claimed, entry: DeliveryEntry | None, dest: Path) -> bool:
        """Move the claimed file to `dest`, rewritten to `entry` first when given. False when
        a person deleted it meanwhile: their deletion stands.

        The claim stays ours until the file has left `inflight/`: released earlier, a
        concurrent `recover()` could move it back to pending under us (and re-send it)."""
        try:
            if entry is not None:
                self._rewrite_sync(claimed, entry)
            durable_rename(claimed.file, dest)
        except (FileNotFoundError, EntryGone):
            self.log.warn("DELIVERY", f"Entry {claimed.entry.id} vanished while claimed (deleted by hand?); skipped")
            return False
        finally:
            self._claimed.discard(claimed.entry.id)
        self._cache.pop(dest.name, None)
        return True

    def _ack_sync(self, claims: list[Claimed]) -> list[None]:
        for claimed in claims:
            # Unlinked first, released after: see `_finish_sync`.
            with contextlib.suppress(FileNotFoundError):
                claimed.file.unlink()
            self._claimed.discard(claimed.entry.id)
        with contextlib.suppress(FileNotFoundError):
            fsync_dir(self.inflight_dir)  # one fsync makes the whole batch's deletions durable
        return [None] * len(claims)

    async def ack(self, claimed: Claimed) -> None:
        """The channel accepted the entry: the one place an entry file is deleted. Durable when
        this returns; group-committed with concurrent acks."""
        await self._acks.submit(claimed)

    async def retry_later(self, claimed: Claimed, last_error: str, next_at: dt.datetime) -> DeliveryEntry:
        """A failed attempt that will be retried: counted, and back to pending."""
        entry = claimed.entry.retried(last_error, next_at)
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    async def hold(self, claimed: Claimed, reason: str, next_at: dt.datetime) -> DeliveryEntry:
        """Back to pending untouched but for the reason and the time: not a counted attempt
        (the channel's account is paused, nothing is wrong with the entry)."""
        entry = claimed.entry.held(reason, next_at)
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    async def release(self, claimed: Claimed) -> None:
        """A drain or a crash cut the attempt: back to pending as it is, attempts unchanged.

        `sendStartedAt` stays: the send may have reached the channel, so the next send is
        logged as a possible duplicate where the channel cannot deduplicate. A marked claim
        holds it in its name only, so the file is rewritten to carry it.
        """
        marked = parse_inflight_name(claimed.file.name)
        entry = claimed.entry if marked is not None and marked[2] is not None else None
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(claimed.entry.id)))

    async def dead_letter(self, claimed: Claimed, reason: str, now: dt.datetime) -> DeliveryEntry:
        entry = claimed.entry.dead(reason, now)
        await self._run(lambda: self._finish_sync(claimed, entry, self.failed_dir / f"{entry.id}.json"))
        return entry

    async def reroute(
        self, claimed: Claimed, *, channel: str, to: str, account_id: str | None, now: dt.datetime, why: str
    ) -> DeliveryEntry:
        """`delivery repair`: point a claimed entry at a new address, a fresh start."""
        entry = claimed.entry.rerouted(channel=channel, to=to, account_id=account_id, now=now, why=why)
        await self._run(lambda: self._finish_sync(claimed, entry, self.pending_path(entry.id)))
        return entry

    # --- operator actions and recovery ----------------------------------------------------

    def _retry_dead_sync(self, entry_id: str, now: dt.datetime) -> DeliveryEntry:
        path = self.failed_dir / f"{entry_id}.json"
        try:
            entry = load_entry(path)
        except FileNotFoundError:
            raise NotFoundError(f"no dead letter with id {entry_id}") from None
        entry = entry.revived(now)
        atomic_write_bytes(path, entry_bytes(entry))
        durable_rename(path, self.pending_path(entry_id))
        return entry

    async def retry_dead(self, entry_id: str, now: dt.datetime) -> DeliveryEntry:
        """`delivery retry ID`: a dead letter back to pending, attempts and budget reset."""
        return await self._run(lambda: self._retry_dead_sync(entry_id, now))

    def _recover_sync(self) -> list[str]:
        return recover_inflight(
            self.inflight_dir, self.pid, self._claimed, self.pending_path, self._quarantine_sync, self.log
        )

    async def recover(self) -> list[str]:
        """Move entries claimed by dead processes (or by an earlier life of this one) back to
        pending. Their `sendStartedAt`, when set, marks a send that may have happened."""
        return await self._run(self._recover_sync)

    def _quarantine_sync(self, path: Path, reason: str, *, name: str | None = None) -> None:
        quarantine(self.quarantine_dir, path, reason, self.log, name=name)
        self._cache.pop(path.name, None)
