"""What is due when (SPEC 7). Pure: no trio, no I/O, no clock read — every time is passed in.

The worker asks this module three kinds of question and acts on the answers:

- `Schedule`: which pending entry is due next, which ids are being attempted, which accounts are
  paused until when. Times are seconds on the trio clock, as the worker passes them.
- The order of a conversation (SPEC 15, "Order"), written here once: an entry is sent only when
  it is the oldest (lowest id: ids sort by creation) unsettled entry of its conversation (same
  channel, account and `to`) and no send of that conversation is in flight. A conversation's
  head waiting for its retry holds the rest of it; it moves on when the head is delivered or
  dead-lettered. Different conversations go in parallel. The PostgreSQL queue states the same
  rule in its claim statement (`cluster.pg_queue.HEAD_OF_CONVERSATION`), because there only the
  database sees what other nodes have in flight.
- `plan_retry`: after a failed attempt, wait how long, or give up and why (`policy.backoff`).
- `plan_repair`: what `delivery repair` does with one pending entry, or nothing when it is sound.
"""

from __future__ import annotations

import bisect
import datetime as dt
import heapq
import math
import random
from collections.abc import Callable, Iterable, Mapping

import attrs

from trio_gateway.errors import DeliveryValidationError
from trio_gateway.policy import backoff, routing
from trio_gateway.policy.config import AgentConfig, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry

# An account the platform paused (WeChat errcode -14: session expired) needs a person; we
# probe it again after this long rather than hammering it or forgetting it.
PAUSE_PROBE_SECONDS = 300.0

AccountKey = tuple[str, str | None]
# (channel, account, to): whose entries are sent one at a time, in the order they were created.
Conversation = tuple[str, str | None, str]


# --- the schedule -------------------------------------------------------------------------------


@attrs.frozen
class Slot:
    """The worker's in-memory view of one pending entry: enough to schedule it, no more."""

    due: float  # trio clock; -inf when not known yet (the claim reads the file and finds out)
    channel: str | None  # None until parsed: no account pause applies before the claim
    account_id: str | None
    to: str | None = None  # None: the conversation is not known, so no order applies to it

    @property
    def conversation(self) -> Conversation | None:
        if self.channel is None or self.to is None:
            return None
        return (self.channel, self.account_id, self.to)


# Every entry known only from the directory listing shares this one slot: due at once, oldest
# id first. Start-up schedules from `listdir` alone and holds no parsed entry per file.
LISTED = Slot(-math.inf, None, None)


@attrs.frozen
class Listing:
    """What a directory listing changed: whether new ids were scheduled, and which known ids
    are waiting on a later due time (their files may have been rescheduled by another process)."""

    added: bool
    waiting: list[str]


@attrs.define
class Schedule:
    """Pending ids by due time, the ids being attempted now, and the paused accounts."""

    _slots: dict[str, Slot] = attrs.Factory(dict)
    # (due, id) for every scheduled id, lazily cleaned: an item is live while it is no earlier
    # than its id's slot and the id is not being attempted (see `_peek`).
    _heap: list[tuple[float, str]] = attrs.Factory(list)
    _active: set[str] = attrs.Factory(set)
    _paused: dict[AccountKey, float] = attrs.Factory(dict)
    # Scheduled ids of each known conversation, oldest first, and the one being attempted.
    _lines: dict[Conversation, list[str]] = attrs.Factory(dict)
    _sending: dict[Conversation, str] = attrs.Factory(dict)
    _sending_of: dict[str, Conversation] = attrs.Factory(dict)
    # Listed ids whose recipient is not read yet, oldest first: none of them is sent, and no
    # entry younger than the oldest of them either (it could belong to the same conversation).
    _unresolved: list[str] = attrs.Factory(list)
    # Ids whose attempt failed with the entry left on disk (`hold`): never due, each keeps its
    # place at the head of its conversation until a rescan lists (and reads) it again.
    _held: set[str] = attrs.Factory(set)

    def put(self, entry_id: str, slot: Slot) -> None:
        self._held.discard(entry_id)
        old = self._slots.get(entry_id)
        if old is not None and old.conversation != slot.conversation:
            self._leave_line(entry_id, old.conversation)
        self._slots[entry_id] = slot
        self._join_line(entry_id, slot.conversation)
        heapq.heappush(self._heap, (slot.due, entry_id))

    def drop(self, entry_id: str) -> None:
        """Settled or gone: forget it until a listing names it again."""
        self._held.discard(entry_id)
        slot = self._slots.pop(entry_id, None)
        if slot is not None:
            self._leave_line(entry_id, slot.conversation)

    def retime(self, entry_id: str, slot: Slot) -> bool:
        """A claim found the entry not due yet: keep its true slot (no heap item: `finish`
        pushes one when the attempt ends). False when the id was dropped meanwhile. The
        conversation already known is kept (a claim that refuses reports no address)."""
        old = self._slots.pop(entry_id, None)
        if old is None:
            return False
        self._slots[entry_id] = slot if old.conversation is None else attrs.evolve(old, due=slot.due)
        if old.conversation is None:
            self._join_line(entry_id, slot.conversation)
        return True

    # --- the order of a conversation ----------------------------------------------------------

    def _join_line(self, entry_id: str, conversation: Conversation | None) -> None:
        if conversation is None:
            return
        line = self._lines.setdefault(conversation, [])
        at = bisect.bisect_left(line, entry_id)
        if at == len(line) or line[at] != entry_id:
            line.insert(at, entry_id)

    def _leave_line(self, entry_id: str, conversation: Conversation | None) -> None:
        line = self._lines.get(conversation) if conversation is not None else None
        if line is None:
            return
        at = bisect.bisect_left(line, entry_id)
        if at < len(line) and line[at] == entry_id:
            del line[at]
            if at == 0:
                self._push_head(conversation)
        if not line:
            del self._lines[conversation]  # type: ignore[arg-type]  # not None: a line was found

    def _push_head(self, conversation: Conversation | None) -> None:
        """The conversation's next entry may be sent now: put it back among the candidates."""
        line = self._lines.get(conversation) if conversation is not None else None
        if line:
            head = line[0]
            slot = self._slots.get(head)
            if slot is not None:
                heapq.heappush(self._heap, (slot.due, head))

    def _in_turn(self, entry_id: str, slot: Slot) -> bool:
        """May this entry be sent now as far as its conversation goes: it is the oldest one
        scheduled and none of the conversation is being sent."""
        conversation = slot.conversation
        if conversation is None:
            return True
        if conversation in self._sending or (self._unresolved and entry_id > self._unresolved[0]):
            return False
        line = self._lines.get(conversation)
        return not line or line[0] == entry_id

    def hold(self, entry_id: str) -> None:
        """The attempt at this id (in flight) failed on disk, the entry left there for the next
        rescan: until a rescan reads it again it is never due, and it still holds its
        conversation, so the entry after it cannot overtake it (SPEC 15)."""
        conversation = self._sending_of.get(entry_id)
        if conversation is None:
            self.drop(entry_id)
            return
        self.put(entry_id, Slot(math.inf, *conversation))
        self._held.add(entry_id)

    def held(self) -> set[str]:
        return set(self._held)

    def release(self, entry_ids: Iterable[str]) -> None:
        """A rescan is about to read the listing: these held ids are forgotten, so a listed one
        is read again as new (held back by nothing younger: `expect`), and a gone one is gone."""
        for entry_id in entry_ids:
            if entry_id in self._held:
                self.drop(entry_id)

    def sending_to(self, conversation: Conversation) -> str | None:
        """The id whose send to this conversation is in flight, if any."""
        return self._sending.get(conversation)

    def is_waiting(self, entry_id: str) -> bool:
        """Scheduled and not being attempted right now."""
        return entry_id in self._slots and entry_id not in self._active

    def pending_count(self) -> int:
        return len(self._slots) + sum(1 for i in self._active if i not in self._slots) + len(self._unresolved)

    def unknown(self, ids: Iterable[str]) -> list[str]:
        """Ids of a listing this schedule has never heard of (neither scheduled nor in flight)."""
        pending = set(self._unresolved)
        return [i for i in ids if i not in self._slots and i not in self._active and i not in pending]

    def expect(self, ids: Iterable[str]) -> None:
        """Listed ids whose recipients are being read: they hold back every younger entry until
        `resolve` says where each belongs, so the oldest can be sent as soon as they are read."""
        self._unresolved = sorted({*self._unresolved, *ids})

    def resolve(self, ids: Iterable[str], known: Mapping[str, Slot]) -> None:
        """These listed ids were read: each is scheduled with its slot from `known`, or with no
        known conversation (a file that did not read: its claim quarantines it). An id in neither
        is forgotten until a listing names it again."""
        done = set(ids)
        self._unresolved = [i for i in self._unresolved if i not in done]
        for entry_id in sorted(done):
            if entry_id in known:
                self.put(entry_id, known[entry_id])
        for conversation in list(self._lines):
            self._push_head(conversation)  # the barrier moved: heads held by it may go now

    def waiting(self, ids: Iterable[str], now: float) -> list[str]:
        """Ids of a listing scheduled for later than `now` and not in flight."""
        return [i for i in ids if i not in self._active and (s := self._slots.get(i)) is not None and s.due > now]

    def take_listing(self, ids: Iterable[str], now: float, known: Mapping[str, Slot] | None = None) -> Listing:
        """A directory listing: a new id gets its slot from `known` (the worker read its
        recipient before any claim: the order of its conversation needs it), else it is due at
        once with no known conversation (a file that did not read; its claim quarantines it).
        Ids being attempted are left alone. Adds only: an id that vanished is dropped when its
        claim finds nothing."""
        added = False
        waiting = []
        for entry_id in ids:
            if entry_id in self._active:
                continue
            slot = self._slots.get(entry_id)
            if slot is None:
                self.put(entry_id, (known or {}).get(entry_id, LISTED))
                added = True
            elif slot.due > now:
                waiting.append(entry_id)
        return Listing(added, waiting)

    # --- what is due --------------------------------------------------------------------------

    def _effective_due(self, slot: Slot) -> float:
        if slot.channel is None:
            return slot.due
        return max(slot.due, self._paused.get((slot.channel, slot.account_id), -math.inf))

    def _peek(self) -> tuple[float, str] | None:
        """The earliest live heap item; stale ones are dropped on the way (an attempt that
        ends with its id still scheduled pushes it again)."""
        while self._heap:
            when, entry_id = self._heap[0]
            slot = self._slots.get(entry_id)
            if slot is not None and entry_id not in self._active and when >= slot.due and self._in_turn(entry_id, slot):
                return when, entry_id
            # Stale, or not its conversation's turn: pushed again when it is (`_push_head`).
            heapq.heappop(self._heap)
        return None

    def next_due(self) -> float:
        top = self._peek()
        return math.inf if top is None else top[0]

    def pop_due(self, now: float) -> str | None:
        """The oldest id due at `now`, skipping (and re-timing) those of paused accounts."""
        while (top := self._peek()) is not None and top[0] <= now:
            heapq.heappop(self._heap)
            effective = self._effective_due(self._slots[top[1]])
            if effective <= now:
                return top[1]
            heapq.heappush(self._heap, (effective, top[1]))
        return None

    def start(self, entry_id: str) -> None:
        """An attempt at this id begins: it is no candidate until `finish`, and nothing else of
        its conversation is either."""
        self._active.add(entry_id)
        slot = self._slots.get(entry_id)
        conversation = slot.conversation if slot is not None else None
        if conversation is not None:
            self._sending[conversation] = entry_id
            self._sending_of[entry_id] = conversation

    def finish(self, entry_id: str) -> None:
        """The attempt ended; an id still scheduled (not due yet, or cut off) goes back on the
        heap, and its conversation's head (itself, or the next entry) is a candidate again."""
        self._active.discard(entry_id)
        conversation = self._sending_of.pop(entry_id, None)
        if conversation is not None and self._sending.get(conversation) == entry_id:
            del self._sending[conversation]
            self._push_head(conversation)
        slot = self._slots.get(entry_id)
        if slot is not None:
            heapq.heappush(self._heap, (slot.due, entry_id))

    # --- paused accounts ----------------------------------------------------------------------

    def paused_until(self, channel: str, account_id: str | None) -> float:
        return self._paused.get((channel, account_id), -math.inf)

    def pause(self, channel: str, account_id: str | None, now: float) -> bool:
        """Hold the account's entries until the next probe. True when it was not paused at
        `now` already (the caller says so once, not at every probe)."""
        key = (channel, account_id)
        fresh = self._paused.get(key, -math.inf) <= now
        self._paused[key] = now + PAUSE_PROBE_SECONDS
        return fresh

    def resume(self, channel: str, account_id: str, now: float) -> bool:
        """The account's held entries are due at `now`. True when any was re-timed."""
        if self._paused.pop((channel, account_id), None) is None:
            return False
        moved = False
        for entry_id, slot in list(self._slots.items()):
            if (slot.channel, slot.account_id) == (channel, account_id):
                self.put(entry_id, attrs.evolve(slot, due=now))
                moved = True
        return moved

    def hold_seconds(self, channel: str, account_id: str | None, now: float) -> float:
        """How long an entry of this account waits before its next attempt: until the pause ends."""
        return max(self._paused.get((channel, account_id), now) - now, 0.0)


# --- retries ------------------------------------------------------------------------------------


@attrs.frozen
class RetryIn:
    attempts: int
    wait: float


@attrs.frozen
class GiveUp:
    attempts: int
    why: str


def plan_retry(
    entry: DeliveryEntry, config: DeliveryConfig, rng: random.Random, retry_after: float | None, now: dt.datetime
) -> RetryIn | GiveUp:
    """After a failed attempt at `entry`: wait (full jitter, the channel's Retry-After as a
    floor), or give up when the attempts or the time budget would run out."""
    attempts = entry.attempts + 1
    wait = backoff.delay(attempts, config.initial_backoff_seconds, config.max_backoff_seconds, rng, retry_after)
    elapsed = (now - (entry.retried_at or entry.created_at)).total_seconds()
    give_up = backoff.exhausted(
        attempts=attempts,
        elapsed=elapsed,
        next_delay=wait,
        max_attempts=config.max_attempts,
        max_total_seconds=config.max_total_retry_seconds,
    )
    return RetryIn(attempts, wait) if give_up is None else GiveUp(attempts, give_up)


# --- the repair plan ----------------------------------------------------------------------------


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

# The platforms' address rule (`channels.registry.check_address`): raises
# `DeliveryValidationError` when `to` cannot be an address on `channel`. Passed in, so this module
# stays pure and below the channels.
CheckAddress = Callable[[str, str | None], object]


def _fits(check_address: CheckAddress, channel: str, to: str | None) -> bool:
    try:
        check_address(channel, to)
    except DeliveryValidationError:
        return False
    return True


def _problem(entry: DeliveryEntry, check_address: CheckAddress) -> str | None:
    origin = entry.requester_origin
    if origin is not None and origin.channel and origin.channel != entry.channel:
        return f"channel {entry.channel} disagrees with requesterOrigin.channel {origin.channel}"
    try:
        check_address(entry.channel, entry.to)
    except DeliveryValidationError as exc:
        return str(exc)
    return None


def plan_repair(
    entry: DeliveryEntry, agents: dict[str, AgentConfig], check_address: CheckAddress
) -> RepairAction | None:
    """What `delivery repair` does with one pending entry; None when it is sound."""
    problem = _problem(entry, check_address)
    if problem is None:
        return None
    ro = entry.requester_origin
    if ro is None or not (ro.channel or ro.delivery_channel):
        return DeadLetter(f"{problem}; no requester origin to re-route to")
    agent = agents.get(entry.agent_id or "") or AgentConfig()
    route = routing.resolve(ro, agent)
    if not _fits(check_address, route.channel, route.to) or route.to is None:
        return DeadLetter(f"{problem}; requester origin {route.channel}:{route.to} is not a valid address either")
    return Reroute(route.channel, route.to, route.account_id, f"re-routed by repair: {problem}")
