"""The worker that sends what the queue holds (SPEC 7): claim, send, settle — ack, retry
later, hold for a paused account, or dead-letter.

The worker runs beside the generations, not inside them: a restart cancels it at once, and
that loses nothing, because the queue is the state. Waiting retries are timers over files on
disk, not work: only an attempt in flight is registered in the `WorkRegistry`, each in its
own cancel scope. An attempt cut by cancellation goes back to pending uncounted. What is due
when, and how long to wait after a failure, is decided by `delivery.scheduler`; this module
does the waiting, the sending and the disk work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import random
from collections import Counter
from typing import Any, Literal, Protocol, Self

import attrs
import trio

from trio_gateway.channels.base import Channel, Outcome
from trio_gateway.delivery.scheduler import LISTED, PAUSE_PROBE_SECONDS, GiveUp, Schedule, Slot, plan_retry
from trio_gateway.errors import WorkAbortedError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import Config, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.base import Claimed, DeliveryStore, NotDue, OutcomeUnknown
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

# Listed entries read per step at start: the oldest are scheduled (and sent) while the rest
# are still being read, so a long queue does not delay the first delivery.
PEEK_BATCH = 256

# A cancelled attempt's entry must get back to pending even while the worker is being torn
# down; disk work is milliseconds, so a short shielded bound is plenty.
RELEASE_TIMEOUT_SECONDS = 2.0


class ChannelLookup(Protocol):
    def get(self, channel: str, account_id: str | None) -> Channel | None: ...


def _lead(entry: DeliveryEntry, *, to: bool = True) -> dict[str, str]:
    """What a `[DELIVERY]` line names first (SPEC 8): in JSON, keys of their own."""
    lead = {"Channel": entry.channel, "id": entry.id}
    return lead | {"to": entry.to} if to else lead


ResultKind = Literal["ok", "retry", "failed", "paused", "released", "skipped"]


@attrs.frozen
class AttemptResult:
    """What became of one entry in one pass (`delivery process --once` prints these)."""

    id: str
    kind: ResultKind
    channel: str = ""
    to: str = ""
    detail: str = ""

    @property
    def line(self) -> str:
        return f"{self.id} {self.kind} channel={self.channel} to={self.to} {self.detail}".rstrip()


@attrs.define
class OutcomeTally:
    """Attempts by (channel, outcome) since the process started: one per process, shared by
    every generation's worker, so `/metrics` counters only grow (SPEC 5: deliveries by
    outcome). "skipped" (nothing was attempted) is not counted."""

    _counts: Counter[tuple[str, str]] = attrs.Factory(Counter)

    def add(self, channel: str, outcome: ResultKind) -> None:
        if outcome != "skipped":
            self._counts[(channel, outcome)] += 1

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)


@attrs.define
class DeliveryWorker:
    queue: DeliveryStore
    channels: ChannelLookup
    config: DeliveryConfig
    clock: WallClock
    log: EventLog
    work: WorkRegistry
    rng: random.Random
    # Bound on settling or releasing an attempt after the send (shielded disk work): the
    # drain's `cleanupTimeoutSeconds`, so a hung queue disk cannot stretch a restart past it.
    cleanup_timeout: float = RELEASE_TIMEOUT_SECONDS
    outcomes: OutcomeTally = attrs.Factory(OutcomeTally)
    _schedule: Schedule = attrs.Factory(Schedule)
    _wake: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    def for_config(
        cls,
        queue: DeliveryStore,
        channels: ChannelLookup,
        config: Config,
        clock: WallClock,
        log: EventLog,
        work: WorkRegistry,
        rng: random.Random | None,
        **extra: Any,
    ) -> Self:
        """A worker (of this class: the file queue's or cluster mode's) for a generation's
        config: its `delivery` section, and the drain's cleanup bound on settling."""
        cleanup = min(RELEASE_TIMEOUT_SECONDS, config.gateway.drain.cleanup_timeout_seconds)
        return cls(
            queue, channels, config.delivery, clock, log, work, rng or random.Random(), cleanup_timeout=cleanup, **extra
        )

    # --- scheduling -------------------------------------------------------------------------

    def _slot(self, entry: DeliveryEntry | None) -> Slot:
        """Where an entry is scheduled; a listed file that did not read: due now, no conversation."""
        if entry is None:
            return LISTED
        return Slot(self.clock.trio_time(entry.next_attempt_at), entry.channel, entry.account_id, entry.to)

    def notify(self, entry: DeliveryEntry) -> None:
        """A new or rescheduled entry: wake the dispatcher if it is now the earliest."""
        self._schedule.put(entry.id, self._slot(entry))
        self._wake.set()

    def pending_count(self) -> int:
        return self._schedule.pending_count()

    async def _rescan(self, listed: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pick up what other processes wrote (and what this one recovered, and everything at
        start). A new entry is read before it is scheduled: its conversation must be known
        before any claim, or it could overtake an older reply to the same person (SPEC 15).
        Entries known to be waiting are re-read, only those whose file changed, in case another
        process rescheduled one (`delivery repair` makes a waiting entry due now)."""
        held = self._schedule.held()  # before the recovery that returns them to pending
        await self.queue.recover()
        ids = await self.queue.pending_ids()
        self._schedule.release(held)
        new = self._schedule.unknown(ids)
        waiting = self._schedule.waiting(ids, trio.current_time())
        self._schedule.expect(new)
        listed.started()  # the queue's size is known; its entries are read from here on
        try:
            # Oldest first, in batches: the first replies go out while the rest are still read.
            for at in range(0, len(new), PEEK_BATCH):
                batch = new[at : at + PEEK_BATCH]
                entries = await self.queue.peek(batch)
                self._schedule.resolve(batch, {i: self._slot(entries.get(i)) for i in batch})
                self._wake.set()
        finally:
            self._schedule.resolve(new, {})  # any not read (a failing disk): the next rescan lists them
        for entry in (await self.queue.peek(waiting)).values() if waiting else ():
            if self._schedule.is_waiting(entry.id):
                self.notify(entry)

    async def _rescan_safely(self, listed: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._rescan(listed)
        except (OSError, OutcomeUnknown) as exc:  # a full or failing disk: the next rescan tries again
            self.log.error("DELIVERY", "Queue rescan failed; retrying at the next interval", error=repr(exc))
        finally:
            with contextlib.suppress(RuntimeError):  # already told (the listing was taken)
                listed.started()

    async def _rescan_loop(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._rescan_safely(task_status)
        while True:
            await trio.sleep(self.config.rescan_interval_seconds)
            await self._rescan_safely()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver continuously until cancelled. Started once the channels are up and the queue
        is listed; its entries are read (and the oldest sent) while the dispatcher runs."""
        limiter = trio.Semaphore(self.config.concurrency)
        async with trio.open_nursery() as nursery:
            await nursery.start(self._rescan_loop)
            task_status.started()
            while True:
                await self._sleep_until_due(free=limiter.value > 0)
                # Start every due attempt there is room for without yielding: they reach the
                # queue together and share one claim batch (`GroupCommit`).
                while limiter.value > 0 and (entry_id := self._schedule.pop_due(trio.current_time())) is not None:
                    limiter.acquire_nowait()
                    self._schedule.start(entry_id)
                    nursery.start_soon(self._run_one, entry_id, limiter)

    async def _sleep_until_due(self, *, free: bool) -> None:
        # With no free slot only a finishing attempt (which sets `_wake`) can change anything.
        with trio.move_on_at(self._schedule.next_due() if free else math.inf):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _run_one(self, entry_id: str, limiter: trio.Semaphore) -> None:
        try:
            await self.attempt(entry_id)
        except Exception as exc:
            # One entry's disk trouble (a vanished file, ENOSPC, EIO) must never take the
            # worker, the generation and the process down with it: the entry stays where it is
            # on disk and the next rescan (or start) picks it up again.
            self.log.error("DELIVERY", f"Attempt at entry {entry_id} failed; left for a later rescan", error=repr(exc))
            self._schedule.hold(entry_id)  # its conversation waits for it, not overtaken
        finally:
            self._schedule.finish(entry_id)
            limiter.release()
            self._wake.set()  # its new due time (or a free slot) may change what comes next

    async def process_once(self) -> list[AttemptResult]:
        """Deliver every due pending entry once (`delivery process --once`), each conversation
        in order by the scheduler's rule: an entry whose older one was not delivered or
        dead-lettered in this pass is left for later, untouched."""
        await self.queue.recover()
        due = await self.queue.due(self.clock.now())
        schedule = Schedule()
        slots = {entry.id: attrs.evolve(self._slot(entry), due=-math.inf) for entry in due}
        for entry_id, slot in slots.items():
            schedule.put(entry_id, slot)
        results: list[AttemptResult] = []
        limiter = trio.Semaphore(self.config.concurrency)
        finished = trio.Event()

        async def one(entry_id: str) -> None:
            nonlocal finished
            try:
                result = await self.attempt(entry_id)
                results.append(result)
                if result.kind in ("ok", "failed", "skipped"):
                    schedule.drop(entry_id)  # settled: its conversation moves on
                else:
                    schedule.put(entry_id, attrs.evolve(slots[entry_id], due=math.inf))  # holds the rest
            finally:
                schedule.finish(entry_id)
                limiter.release()
                finished.set()

        async with trio.open_nursery() as nursery:
            while True:
                while limiter.value > 0 and (next_id := schedule.pop_due(0.0)) is not None:
                    limiter.acquire_nowait()
                    schedule.start(next_id)
                    nursery.start_soon(one, next_id)
                if limiter.value == self.config.concurrency:
                    break  # nothing in flight and nothing more in turn
                await finished.wait()
                finished = trio.Event()
        return sorted(results, key=lambda r: r.id)

    # --- one attempt ------------------------------------------------------------------------

    async def attempt(self, entry_id: str) -> AttemptResult:
        """Claim, send and settle one entry. Cancellation releases it uncounted (as an
        attempt: `outcomes` tallies it "released")."""
        result = await self._attempt(entry_id)
        self.outcomes.add(result.channel, result.kind)
        return result

    async def _attempt(self, entry_id: str) -> AttemptResult:
        # A claim this attempt could not finish (cut from the claim's batch, or settling past
        # its bound) is let go, so the next rescan's recovery returns it to pending.
        try:
            # Claimed and marked as sending in one step (one fsync per batch); an entry that
            # then turns out unsendable is settled at once, its mark cleared with it.
            claimed = await self.queue.claim_to_send(entry_id, self.clock.now())
        except BaseException:
            self.queue.let_go(entry_id)  # its batch may still claim it for us
            raise
        if not isinstance(claimed, Claimed):
            return self._unclaimed(entry_id, claimed)
        try:
            return await self._attempt_claimed(claimed)
        finally:
            if self.queue.holds(entry_id):
                self.queue.let_go(entry_id)

    async def _attempt_claimed(self, claimed: Claimed) -> AttemptResult:
        self._schedule.drop(claimed.entry.id)
        return await self.deliver(claimed)

    async def deliver(self, claimed: Claimed) -> AttemptResult:
        """Send and settle one entry claimed and marked as sending. Cancellation releases it
        uncounted."""
        entry = claimed.entry
        channel = self.channels.get(entry.channel, entry.account_id)
        pause_end = self._schedule.paused_until(entry.channel, entry.account_id)
        if channel is None or pause_end > trio.current_time():
            with trio.move_on_after(self.cleanup_timeout, shield=True):
                return await self._not_sendable(claimed, channel is None)
        else:
            try:
                outcome = await self._send(channel, claimed)
            except BaseException:
                self.outcomes.add(entry.channel, "released")
                with trio.move_on_after(self.cleanup_timeout, shield=True):
                    await self.queue.release(claimed)
                self.log.info("DELIVERY", "Released: attempt cut off, not counted", lead=_lead(entry, to=False))
                raise
            # Settling is short disk work whose result must survive a cancellation arriving
            # after the channel answered: an `ok` lost here would be re-sent after a restart.
            with trio.move_on_after(self.cleanup_timeout, shield=True):
                return await self._settle(claimed, outcome)
        self._schedule.hold(entry.id)  # left on disk: its conversation waits for the rescan
        return AttemptResult(
            entry.id, "released", entry.channel, entry.to, "settling timed out; recovered at the next rescan"
        )

    async def _not_sendable(self, claimed: Claimed, unconfigured: bool) -> AttemptResult:
        entry = claimed.entry
        if unconfigured:
            account = entry.account_id or "-"
            return await self._fail(claimed, f"no channel {entry.channel} with account {account} is configured")
        await self._hold(claimed, "account paused")
        return AttemptResult(entry.id, "paused", entry.channel, entry.to, "account paused")

    def _unclaimed(self, entry_id: str, claimed: NotDue | None) -> AttemptResult:
        if isinstance(claimed, NotDue):
            slot = Slot(self.clock.trio_time(claimed.next_attempt_at), claimed.channel, claimed.account_id)
            if self._schedule.retime(entry_id, slot):
                return AttemptResult(entry_id, "skipped", claimed.channel or "", detail="not due yet")
        self._schedule.drop(entry_id)
        return AttemptResult(entry_id, "skipped", detail="gone (claimed elsewhere or deleted)")

    async def _send(self, channel: Channel, claimed: Claimed) -> Outcome:
        entry = claimed.entry
        if claimed.resend_of is not None and not channel.deduplicates:
            self.log.warn(
                "DELIVERY",
                f"Possible duplicate: a send started at {claimed.resend_of.isoformat()} had no recorded "
                "outcome; resending",
                lead=_lead(entry, to=False),
                idempotencyKey=entry.idempotency_key,
            )
        timeout = self.config.attempt_timeout_seconds
        try:
            with self.work.track("delivery_attempt") as unit:
                unit.progress(f"delivery_attempt:{entry.channel}")
                with trio.move_on_after(timeout) as scope:
                    return await channel.send(claimed.entry)
        except WorkAbortedError as exc:
            return Outcome("retry", str(exc))
        except Exception as exc:  # a broken adapter must not take the worker down
            self.log.error("DELIVERY", f"send raised {exc!r}", lead=_lead(entry, to=False))
            return Outcome("retry", f"channel error: {type(exc).__name__}: {exc}")
        assert scope.cancelled_caught
        return Outcome("retry", f"attempt timed out after {timeout:g}s")

    async def _settle(self, claimed: Claimed, outcome: Outcome) -> AttemptResult:
        entry = claimed.entry
        if outcome.kind == "ok":
            await self.queue.ack(claimed)
            self.log.info("DELIVERY", "Success", lead=_lead(entry))
            return AttemptResult(entry.id, "ok", entry.channel, entry.to)
        if outcome.kind == "permanent":
            # The attempt was made and answered: it counts, so `attempts` says how often we asked.
            return await self._fail(claimed, outcome.reason or "permanent rejection", attempts=entry.attempts + 1)
        if outcome.kind == "paused":
            self._pause(entry, outcome.reason)
            await self._hold(claimed, f"paused: {outcome.reason}")
            return AttemptResult(entry.id, "paused", entry.channel, entry.to, outcome.reason)
        return await self._retry(claimed, outcome)

    async def _retry(self, claimed: Claimed, outcome: Outcome) -> AttemptResult:
        entry = claimed.entry
        now = self.clock.now()
        plan = plan_retry(entry, self.config, self.rng, outcome.retry_after, now)
        reason = outcome.reason or outcome.kind
        if isinstance(plan, GiveUp):
            return await self._fail(claimed, f"{reason}; {plan.why}", attempts=plan.attempts)
        updated = await self.queue.retry_later(claimed, reason, now + dt.timedelta(seconds=plan.wait))
        self.notify(updated)
        self.log.warn(
            "DELIVERY",
            f"Retry {plan.attempts}/{self.config.max_attempts} in {plan.wait:.1f}s",
            lead=_lead(entry),
            reason=reason,
        )
        return AttemptResult(entry.id, "retry", entry.channel, entry.to, f"in {plan.wait:.1f}s: {reason}")

    async def _fail(self, claimed: Claimed, reason: str, *, attempts: int | None = None) -> AttemptResult:
        entry = claimed.entry
        if attempts is not None:
            claimed = attrs.evolve(claimed, entry=attrs.evolve(entry, attempts=attempts))
        await self.queue.dead_letter(claimed, reason, self.clock.now())
        self.log.error("DELIVERY", f"Failed: {reason}", lead=_lead(entry))
        return AttemptResult(entry.id, "failed", entry.channel, entry.to, reason)

    def _pause(self, entry: DeliveryEntry, reason: str) -> None:
        if self._schedule.pause(entry.channel, entry.account_id, trio.current_time()):
            self.log.error(
                "DELIVERY",
                f"Paused: {reason}; its entries stay pending, next probe in {PAUSE_PROBE_SECONDS:g}s",
                lead={"Channel": entry.channel, "account": entry.account_id or "-"},
            )

    def pause_account(self, channel: str, account_id: str, reason: str) -> None:
        """A listener's auth failure (SPEC 11): this account's sends wait too (entries stay
        pending, probed as a send-side pause is) until `resume_account`. The log line is the
        listener's."""
        self._schedule.pause(channel, account_id, trio.current_time())

    def resume_account(self, channel: str, account_id: str) -> None:
        """`channels resume`: the account's held entries are due again now."""
        if self._schedule.resume(channel, account_id, trio.current_time()):
            self._wake.set()

    async def _hold(self, claimed: Claimed, reason: str) -> None:
        wait = self._schedule.hold_seconds(claimed.entry.channel, claimed.entry.account_id, trio.current_time())
        self.notify(await self.queue.hold(claimed, reason, self.clock.now() + dt.timedelta(seconds=wait)))
