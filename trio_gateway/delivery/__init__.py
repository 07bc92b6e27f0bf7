"""Getting entries to their channels (SPEC 7): the `Outbox` agents write to, the worker that
sends, and `repair` for queues that were written wrong before validation existed.

The worker runs beside the generations, not inside them: a restart cancels it at once, and
that loses nothing, because the queue is the state. Waiting retries are timers over files on
disk, not work: only an attempt in flight is registered in the `WorkRegistry`, each in its
own cancel scope. An attempt cut by cancellation goes back to pending uncounted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import heapq
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, Self

import attrs
import trio

from trio_gateway.channels.base import Channel, Outcome
from trio_gateway.channels.registry import check_address, fits
from trio_gateway.errors import DeliveryValidationError, InsufficientStorageError, WorkAbortedError
from trio_gateway.log import EventLog
from trio_gateway.policy import backoff, routing
from trio_gateway.policy.config import AgentConfig, Config, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry, DeliveryKind, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.disk import StorageHealth, is_no_space
from trio_gateway.storage.queue import Claimed, NotDue, OutcomeUnknown
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

# A cancelled attempt's entry must get back to pending even while the worker is being torn
# down; disk work is milliseconds, so a short shielded bound is plenty.
RELEASE_TIMEOUT_SECONDS = 2.0
# A notice of accepted work that the queue disk refused is retried from this delay, doubling
# up to the maximum: a full disk is freed by a person, in minutes, not milliseconds.
ENQUEUE_RETRY_FIRST_SECONDS = 0.5
ENQUEUE_RETRY_MAX_SECONDS = 30.0
# An account the platform paused (WeChat errcode -14: session expired) needs a person; we
# probe it again after this long rather than hammering it or forgetting it.
PAUSE_PROBE_SECONDS = 300.0


class ChannelLookup(Protocol):
    def get(self, channel: str, account_id: str | None) -> Channel | None: ...


# --- the outbox -------------------------------------------------------------------------------


@attrs.define
class Outbox:
    """What agents, cron and the edges call to send something: route, validate, enqueue."""

    queue: DeliveryStore
    agents: dict[str, AgentConfig]
    clock: WallClock
    log: EventLog
    # The worker's `notify`, so a new entry is sent now rather than at the next rescan.
    on_enqueued: Callable[[DeliveryEntry], None] | None = None
    # Told while accepted work waits for a full queue disk, so intake refuses new work (507).
    storage: StorageHealth = attrs.Factory(StorageHealth)

    async def submit(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> DeliveryEntry:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise DeliveryValidationError(f"no agent named {agent_id!r}")
        route = routing.resolve(origin, agent)
        if route.is_fallback:
            self.log.warn(
                "DELIVERY",
                f"No requester origin channel; delivering {kind} to agent {agent_id}'s first channel {route.channel}",
            )
        entry = self._entry(kind, route.channel, route.to, route.account_id, agent_id, origin, text, idempotency_key)
        await self._enqueue_until_kept(entry)
        return entry

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        """`delivery create` and `POST /v1/deliveries`: an explicit address, no routing."""
        if account_id is None and agent_id is not None and agent_id in self.agents:
            account_id = self.agents[agent_id].account_id
        entry = self._entry("manual", channel, to, account_id, agent_id, None, text, None)
        try:
            await self.queue.enqueue(entry)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            raise InsufficientStorageError(f"the delivery queue's disk is full: {exc.strerror}") from None
        except OutcomeUnknown as exc:
            raise InsufficientStorageError(f"the delivery queue's disk is not answering: {exc}") from None
        self._enqueued(entry)
        return entry

    async def _enqueue_until_kept(self, entry: DeliveryEntry) -> None:
        """Accepted work's notices are never dropped because the disk is full or stuck: the
        same entry (same id, so a write that did land is not doubled) is retried with backoff
        until it is on disk, or the caller is cancelled (a drain: the turn is kept for the
        next generation, its reply with it)."""
        delay = ENQUEUE_RETRY_FIRST_SECONDS
        attempt = 1
        while True:
            try:
                await self.queue.enqueue(entry)
                break
            except (OSError, OutcomeUnknown) as exc:
                self.storage.failed("queue", exc)
                if attempt == 1:
                    self.log.error(
                        "DELIVERY",
                        f"Entry {entry.id} not enqueued yet; retrying until the queue disk takes it",
                        kind=entry.kind,
                        error=repr(exc),
                    )
            await trio.sleep(delay)
            delay = min(delay * 2, ENQUEUE_RETRY_MAX_SECONDS)
            attempt += 1
        self.storage.recovered("queue")
        if attempt > 1:
            self.log.info("DELIVERY", f"Entry {entry.id} enqueued after {attempt} attempts")
        self._enqueued(entry)

    def _enqueued(self, entry: DeliveryEntry) -> None:
        if self.on_enqueued is not None:
            self.on_enqueued(entry)

    def _entry(
        self,
        kind: DeliveryKind,
        channel: str,
        to: str | None,
        account_id: str | None,
        agent_id: str | None,
        origin: Origin | None,
        text: str,
        idempotency_key: str | None,
    ) -> DeliveryEntry:
        """A validated, routed entry, not written yet."""
        try:
            warning = check_address(channel, to)
        except DeliveryValidationError:
            self.log.error("VALIDATION", f"Channel-address mismatch: channel={channel}, address={to}")
            raise
        if warning is not None:
            self.log.warn("VALIDATION", warning)
        assert to is not None  # check_address refuses an empty address
        now = self.clock.now()
        entry_id = self.queue.new_id(now)
        entry = DeliveryEntry(
            id=entry_id,
            kind=kind,
            channel=channel,
            to=to,
            account_id=account_id,
            agent_id=agent_id,
            requester_origin=origin,
            payload=Payload(text),
            idempotency_key=idempotency_key or entry_id,
            created_at=now,
            next_attempt_at=now,
        )
        return entry


# --- the worker -------------------------------------------------------------------------------


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


@attrs.frozen
class Slot:
    """The worker's in-memory view of one pending entry: enough to schedule it, no more."""

    due: float  # trio clock; -inf when not known yet (the claim reads the file and finds out)
    channel: str | None  # None until parsed: no account pause applies before the claim
    account_id: str | None


# Every entry known only from the directory listing shares this one slot: due at once, oldest
# id first. Start-up schedules from `listdir` alone and holds no parsed entry per file.
LISTED = Slot(-math.inf, None, None)


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
    _schedule: dict[str, Slot] = attrs.Factory(dict)
    # (due, id) for every scheduled id, lazily cleaned: an item is live while it is no earlier
    # than its id's slot and the id is not being attempted (see `_peek_heap`).
    _heap: list[tuple[float, str]] = attrs.Factory(list)
    _active: set[str] = attrs.Factory(set)
    _paused: dict[tuple[str, str | None], float] = attrs.Factory(dict)
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

    def notify(self, entry: DeliveryEntry) -> None:
        """A new or rescheduled entry: wake the dispatcher if it is now the earliest."""
        self._put(entry.id, Slot(self.clock.trio_time(entry.next_attempt_at), entry.channel, entry.account_id))

    def _put(self, entry_id: str, slot: Slot) -> None:
        self._schedule[entry_id] = slot
        heapq.heappush(self._heap, (slot.due, entry_id))
        self._wake.set()

    def pending_count(self) -> int:
        return len(self._schedule) + sum(1 for i in self._active if i not in self._schedule)

    def _effective_due(self, slot: Slot) -> float:
        if slot.channel is None:
            return slot.due
        return max(slot.due, self._paused.get((slot.channel, slot.account_id), -math.inf))

    def _peek_heap(self) -> tuple[float, str] | None:
        """The earliest live heap item; stale ones are dropped on the way (an attempt that
        ends with its id still scheduled pushes it again)."""
        while self._heap:
            when, entry_id = self._heap[0]
            slot = self._schedule.get(entry_id)
            if slot is not None and entry_id not in self._active and when >= slot.due:
                return when, entry_id
            heapq.heappop(self._heap)
        return None

    def _next_due(self) -> float:
        top = self._peek_heap()
        return math.inf if top is None else top[0]

    def _pop_due(self) -> str | None:
        """The oldest due id, skipping (and re-timing) those of paused accounts."""
        now = trio.current_time()
        while (top := self._peek_heap()) is not None and top[0] <= now:
            heapq.heappop(self._heap)
            effective = self._effective_due(self._schedule[top[1]])
            if effective <= now:
                return top[1]
            heapq.heappush(self._heap, (effective, top[1]))
        return None

    async def _rescan(self) -> None:
        """Pick up what other processes wrote (and what this one recovered) from the directory
        listing alone: a new id is due at once and parsed when claimed. Adds only: an id that
        vanished is dropped when its claim finds nothing. Entries known to be waiting are
        re-read, only those whose file changed, in case another process rescheduled one
        (`delivery repair` makes a waiting entry due now)."""
        await self.queue.recover()
        ids = await self.queue.pending_ids()
        now = trio.current_time()
        waiting = []
        for entry_id in ids:
            slot = self._schedule.get(entry_id)
            if entry_id in self._active:
                continue
            if slot is None:
                self._put(entry_id, LISTED)
            elif slot.due > now:
                waiting.append(entry_id)
        for entry in (await self.queue.peek(waiting)).values() if waiting else ():
            if entry.id in self._schedule and entry.id not in self._active:
                self.notify(entry)

    async def _rescan_safely(self) -> None:
        try:
            await self._rescan()
        except (OSError, OutcomeUnknown) as exc:  # a full or failing disk: the next rescan tries again
            self.log.error("DELIVERY", "Queue rescan failed; retrying at the next interval", error=repr(exc))

    async def _rescan_loop(self) -> None:
        while True:
            await trio.sleep(self.config.rescan_interval_seconds)
            await self._rescan_safely()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver continuously until cancelled. Started once the channels are up."""
        await self._rescan_safely()
        task_status.started()
        limiter = trio.Semaphore(self.config.concurrency)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rescan_loop)
            while True:
                await self._sleep_until_due(free=limiter.value > 0)
                # Start every due attempt there is room for without yielding: they reach the
                # queue together and share one claim batch (`GroupCommit`).
                while limiter.value > 0 and (entry_id := self._pop_due()) is not None:
                    limiter.acquire_nowait()
                    self._active.add(entry_id)
                    nursery.start_soon(self._run_one, entry_id, limiter)

    async def _sleep_until_due(self, *, free: bool) -> None:
        # With no free slot only a finishing attempt (which sets `_wake`) can change anything.
        with trio.move_on_at(self._next_due() if free else math.inf):
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
            self._schedule.pop(entry_id, None)
        finally:
            self._active.discard(entry_id)
            slot = self._schedule.get(entry_id)
            if slot is not None:  # not settled (not due yet, or cut off): back on the heap
                heapq.heappush(self._heap, (slot.due, entry_id))
            limiter.release()
            self._wake.set()  # its new due time (or a free slot) may change what comes next

    async def process_once(self) -> list[AttemptResult]:
        """Deliver every due pending entry once (`delivery process --once`)."""
        await self.queue.recover()
        due = await self.queue.due(self.clock.now())
        results: list[AttemptResult] = []
        limiter = trio.Semaphore(self.config.concurrency)

        async def one(entry_id: str) -> None:
            async with limiter:
                results.append(await self.attempt(entry_id))

        async with trio.open_nursery() as nursery:
            for entry in due:
                nursery.start_soon(one, entry.id)
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
        entry_id = claimed.entry.id
        self._schedule.pop(entry_id, None)
        return await self.deliver(claimed)

    async def deliver(self, claimed: Claimed) -> AttemptResult:
        """Send and settle one entry claimed and marked as sending. Cancellation releases it
        uncounted."""
        entry = claimed.entry
        channel = self.channels.get(entry.channel, entry.account_id)
        pause_end = self._paused.get((entry.channel, entry.account_id), -math.inf)
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
        slot = self._schedule.pop(entry_id, None)
        if isinstance(claimed, NotDue) and slot is not None:
            due = self.clock.trio_time(claimed.next_attempt_at)
            self._schedule[entry_id] = Slot(due, claimed.channel, claimed.account_id)
            return AttemptResult(entry_id, "skipped", claimed.channel or "", detail="not due yet")
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
        entry, cfg = claimed.entry, self.config
        attempts = entry.attempts + 1
        wait = backoff.delay(
            attempts, cfg.initial_backoff_seconds, cfg.max_backoff_seconds, self.rng, outcome.retry_after
        )
        now = self.clock.now()
        elapsed = (now - (entry.retried_at or entry.created_at)).total_seconds()
        give_up = backoff.exhausted(
            attempts=attempts,
            elapsed=elapsed,
            next_delay=wait,
            max_attempts=cfg.max_attempts,
            max_total_seconds=cfg.max_total_retry_seconds,
        )
        reason = outcome.reason or outcome.kind
        if give_up is not None:
            return await self._fail(claimed, f"{reason}; {give_up}", attempts=attempts)
        updated = await self.queue.retry_later(claimed, reason, now + dt.timedelta(seconds=wait))
        self.notify(updated)
        self.log.warn(
            "DELIVERY",
            f"Retry {attempts}/{cfg.max_attempts} in {wait:.1f}s",
            lead=_lead(entry),
            reason=reason,
        )
        return AttemptResult(entry.id, "retry", entry.channel, entry.to, f"in {wait:.1f}s: {reason}")

    async def _fail(self, claimed: Claimed, reason: str, *, attempts: int | None = None) -> AttemptResult:
        entry = claimed.entry
        if attempts is not None:
            claimed = attrs.evolve(claimed, entry=attrs.evolve(entry, attempts=attempts))
        await self.queue.dead_letter(claimed, reason, self.clock.now())
        self.log.error("DELIVERY", f"Failed: {reason}", lead=_lead(entry))
        return AttemptResult(entry.id, "failed", entry.channel, entry.to, reason)

    def _pause(self, entry: DeliveryEntry, reason: str) -> None:
        key = (entry.channel, entry.account_id)
        if self._paused.get(key, -math.inf) <= trio.current_time():
            self.log.error(
                "DELIVERY",
                f"Paused: {reason}; its entries stay pending, next probe in {PAUSE_PROBE_SECONDS:g}s",
                lead={"Channel": entry.channel, "account": entry.account_id or "-"},
            )
        self._paused[key] = trio.current_time() + PAUSE_PROBE_SECONDS

    def pause_account(self, channel: str, account_id: str, reason: str) -> None:
        """A listener's auth failure (SPEC 11): this account's sends wait too (entries stay
        pending, probed as a send-side pause is) until `resume_account`. The log line is the
        listener's."""
        self._paused[(channel, account_id)] = trio.current_time() + PAUSE_PROBE_SECONDS

    def resume_account(self, channel: str, account_id: str) -> None:
        """`channels resume`: the account's held entries are due again now."""
        if self._paused.pop((channel, account_id), None) is None:
            return
        for entry_id, slot in list(self._schedule.items()):
            if (slot.channel, slot.account_id) == (channel, account_id):
                self._put(entry_id, attrs.evolve(slot, due=trio.current_time()))

    async def _hold(self, claimed: Claimed, reason: str) -> None:
        resume = self._paused.get((claimed.entry.channel, claimed.entry.account_id), trio.current_time())
        next_at = self.clock.now() + dt.timedelta(seconds=max(resume - trio.current_time(), 0.0))
        self.notify(await self.queue.hold(claimed, reason, next_at))


# --- repair -----------------------------------------------------------------------------------


@attrs.frozen
class Reroute:
    channel: str
    to: str
    account_id: str | None
    why: str


@attrs.frozen
class DeadLetter:
    reason: str


RepairAction = Reroute | DeadLetter


def _problem(entry: DeliveryEntry) -> str | None:
    origin = entry.requester_origin
    if origin is not None and origin.channel and origin.channel != entry.channel:
        return f"channel {entry.channel} disagrees with requesterOrigin.channel {origin.channel}"
    try:
        check_address(entry.channel, entry.to)
    except DeliveryValidationError as exc:
        return str(exc)
    return None


def plan_repair(entry: DeliveryEntry, agents: dict[str, AgentConfig]) -> RepairAction | None:
    """What `delivery repair` does with one pending entry; None when it is sound. Pure."""
    problem = _problem(entry)
    if problem is None:
        return None
    ro = entry.requester_origin
    if ro is None or not (ro.channel or ro.delivery_channel):
        return DeadLetter(f"{problem}; no requester origin to re-route to")
    agent = agents.get(entry.agent_id or "") or AgentConfig()
    route = routing.resolve(ro, agent)
    if not fits(route.channel, route.to) or route.to is None:
        return DeadLetter(f"{problem}; requester origin {route.channel}:{route.to} is not a valid address either")
    return Reroute(route.channel, route.to, route.account_id, f"re-routed by repair: {problem}")


@attrs.frozen
class RepairReport:
    entry: DeliveryEntry
    action: RepairAction
    done: bool  # False in a dry run, or when the entry was claimed elsewhere meanwhile

    @property
    def line(self) -> str:
        e, a = self.entry, self.action
        verb = "would" if not self.done else "did"
        if isinstance(a, Reroute):
            return f"{e.id} {verb} re-route {e.channel}:{e.to} -> {a.channel}:{a.to} ({a.why})"
        return f"{e.id} {verb} dead-letter {e.channel}:{e.to}: {a.reason}"


async def repair(
    queue: DeliveryStore,
    agents: dict[str, AgentConfig],
    clock: WallClock,
    *,
    dry_run: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[RepairReport]:
    """Re-route or dead-letter every misrouted pending entry. Deletes nothing."""
    entries: Sequence[DeliveryEntry] = await queue.list_pending()
    reports: list[RepairReport] = []
    for n, entry in enumerate(entries, 1):
        if on_progress is not None:
            on_progress(n, len(entries))
        action = plan_repair(entry, agents)
        if action is None:
            continue
        done = False if dry_run else await _apply(queue, entry, action, clock)
        reports.append(RepairReport(entry, action, done))
    return reports


async def _apply(queue: DeliveryStore, entry: DeliveryEntry, action: RepairAction, clock: WallClock) -> bool:
    # A claim, not a direct write: a running worker may be sending this entry right now.
    # Repair acts whether or not the entry is due: a misrouted entry waiting on a backoff
    # is exactly the seed's case.
    claimed = await queue.claim(entry.id, dt.datetime.max.replace(tzinfo=dt.UTC))
    if not isinstance(claimed, Claimed):
        return False
    now = clock.now()
    if isinstance(action, Reroute):
        await queue.reroute(
            claimed, channel=action.channel, to=action.to, account_id=action.account_id, now=now, why=action.why
        )
    else:
        await queue.dead_letter(claimed, action.reason, now)
    return True


# --- the runtime's view -----------------------------------------------------------------------


class ClosableChannels(ChannelLookup, Protocol):
    async def aclose(self) -> None: ...


@attrs.define
class QueueDelivery:
    """One generation's delivery side (`gateway.DeliveryService`): the outbox turns write to
    and the worker that empties the queue, over the same `DeliveryQueue` object (one per
    process, so `recover()` knows which of its own claims are live)."""

    outbox: Outbox
    worker: DeliveryWorker
    channels: ClosableChannels
    _failed: int = 0

    @classmethod
    def build(
        cls,
        queue: DeliveryStore,
        channels: ClosableChannels,
        config: Config,
        clock: WallClock,
        log: EventLog,
        work: WorkRegistry,
        rng: random.Random | None = None,
        storage: StorageHealth | None = None,
        outcomes: OutcomeTally | None = None,
    ) -> QueueDelivery:
        worker = DeliveryWorker.for_config(
            queue, channels, config, clock, log, work, rng, outcomes=outcomes or OutcomeTally()
        )
        outbox = Outbox(queue, config.agents, clock, log, on_enqueued=worker.notify, storage=storage or StorageHealth())
        return cls(outbox, worker, channels)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.worker.run)
            task_status.started()
            nursery.start_soon(self._count_failed)

    async def _count_failed(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # a count for /v1/status only: keep the last one
                self._failed = len(await self.worker.queue.list_failed())
            await trio.sleep(self.worker.config.rescan_interval_seconds)

    def counts(self) -> dict[str, int]:
        return {"pending": self.worker.pending_count(), "failed": self._failed}

    def outcome_counts(self) -> dict[tuple[str, str], int]:
        """Attempts by (channel, outcome) since the process started (`/metrics`)."""
        return self.worker.outcomes.counts()

    @property
    def store(self) -> DeliveryStore:
        return self.worker.queue

    async def aclose(self) -> None:
        await self.channels.aclose()
