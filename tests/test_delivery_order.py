"""SPEC 15 "Order": one conversation (channel, account, `to`) is sent one entry at a time, oldest
first; the next waits until the previous is delivered or dead-lettered; different conversations go
in parallel up to `concurrency`. The rule is the pure scheduler's; the worker tests run it on the
file queue on trio's MockClock."""

from __future__ import annotations

import datetime as dt
import errno
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from test_delivery import ScriptedChannel, make_rig

from trio_gateway.channels.base import OK, Outcome
from trio_gateway.delivery.scheduler import Schedule, Slot
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.base import Claimed
from trio_gateway.storage.queue import DeliveryQueue


def _slot(to: str, due: float = 0.0) -> Slot:
    return Slot(due, "telegram", "bot", to)


def test_the_next_entry_of_a_conversation_waits_for_the_one_in_flight() -> None:
    schedule = Schedule()
    for entry_id, to in [("01", "alice"), ("02", "alice"), ("03", "bob")]:
        schedule.put(entry_id, _slot(to))
    assert schedule.pop_due(0.0) == "01"
    schedule.start("01")
    assert schedule.pop_due(0.0) == "03"  # another conversation goes on
    schedule.start("03")
    assert schedule.pop_due(0.0) is None  # "02" waits for "01"
    assert schedule.sending_to(("telegram", "bot", "alice")) == "01"
    schedule.drop("01")  # delivered
    assert schedule.pop_due(0.0) is None  # still in flight until the attempt ends
    schedule.finish("01")
    assert schedule.pop_due(0.0) == "02"


def test_a_head_waiting_for_its_retry_holds_the_rest_of_its_conversation() -> None:
    schedule = Schedule()
    schedule.put("01", _slot("alice"))
    schedule.put("02", _slot("alice"))
    assert schedule.pop_due(0.0) == "01"
    schedule.start("01")
    schedule.drop("01")
    schedule.put("01", _slot("alice", due=30.0))  # the attempt failed: retry in 30 s
    schedule.finish("01")
    assert schedule.pop_due(29.0) is None  # "02" is due but not its turn
    assert schedule.next_due() == 30.0
    assert schedule.pop_due(30.0) == "01"
    schedule.start("01")
    schedule.drop("01")  # dead-lettered this time: the conversation moves on
    schedule.finish("01")
    assert schedule.pop_due(30.0) == "02"


def test_an_older_entry_found_later_goes_first() -> None:
    schedule = Schedule()
    schedule.put("05", _slot("alice"))
    schedule.put("03", _slot("alice"))  # recovered from a dead claimer: older
    assert schedule.pop_due(0.0) == "03"


def test_an_entry_whose_conversation_is_unknown_is_not_held() -> None:
    schedule = Schedule()
    schedule.put("01", _slot("alice"))
    schedule.put("02", Slot(0.0, None, None))  # unreadable file: its claim quarantines it
    assert schedule.pop_due(0.0) == "01"
    schedule.start("01")
    assert schedule.pop_due(0.0) == "02"


ops = st.lists(
    st.tuples(st.sampled_from(["put", "pop", "settle", "retry"]), st.integers(0, 3), st.integers(0, 40)),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops)
def test_never_two_in_flight_for_one_recipient_and_always_the_oldest(ops: list[tuple[str, int, int]]) -> None:
    """Any interleaving of new entries, dispatches, settles and retries: a dispatched entry is
    the oldest scheduled one of its conversation, and its conversation has nothing else in flight."""
    schedule = Schedule()
    scheduled: dict[str, str] = {}  # id -> recipient, still unsettled
    in_flight: dict[str, str] = {}
    serial = 0
    now = 0.0
    for op, who, n in ops:
        now += 1.0
        if op == "put":
            serial += 1
            entry_id = f"{serial:04d}"
            scheduled[entry_id] = f"r{who}"
            schedule.put(entry_id, _slot(f"r{who}", due=now))
        elif op == "pop":
            entry_id = schedule.pop_due(now)
            if entry_id is None:
                continue
            to = scheduled[entry_id]
            assert to not in in_flight.values()
            assert entry_id == min(i for i, t in scheduled.items() if t == to)
            schedule.start(entry_id)
            in_flight[entry_id] = to
        elif in_flight:
            entry_id = sorted(in_flight)[n % len(in_flight)]
            to = in_flight.pop(entry_id)
            schedule.drop(entry_id)
            if op == "retry":
                schedule.put(entry_id, _slot(to, due=now + n))
            else:
                del scheduled[entry_id]
            schedule.finish(entry_id)


async def test_twelve_quick_replies_to_one_chat_arrive_in_order(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    console = ScriptedChannel("console", delay=0.5)
    rig = make_rig(tmp_path, console, concurrency=8)
    chat = await rig.add(12, to="chat-1")
    other = await rig.add(3, to="chat-2")
    await rig.run_for(30)
    sent = [i for _, i in console.sends]
    assert [i for i in sent if i in {e.id for e in chat}] == [e.id for e in chat]
    assert [i for i in sent if i in {e.id for e in other}] == [e.id for e in other]
    assert console.max_in_flight == 2  # one per conversation, the two in parallel
    assert max(console.send_times()) == 5.5  # 12 sends of 0.5 s, one after another


async def test_a_failing_head_holds_its_chat_until_it_is_dead_lettered(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    first: list[str] = []

    def script(entry: DeliveryEntry, n: int) -> Outcome:
        if not first:
            first.append(entry.id)
        return Outcome("retry", "HTTP 503") if entry.id == first[0] else OK

    console = ScriptedChannel("console", script)
    rig = make_rig(tmp_path, console, max_attempts=3, initial_backoff_seconds=10, max_backoff_seconds=10)
    head, *rest = await rig.add(3, to="chat-1")
    await rig.run_for(120)
    sent = [i for _, i in console.sends]
    assert sent == [head.id, head.id, head.id, rest[0].id, rest[1].id]  # nothing overtook the head
    assert [e.id for e in await rig.queue.list_failed()] == [head.id]


async def test_process_once_keeps_the_order_too(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """`delivery process --once`: an entry whose older one was not settled in this pass waits."""

    def script(entry: DeliveryEntry, n: int) -> Outcome:
        return Outcome("retry", "HTTP 503") if entry.payload.text == "text 0" and entry.to == "chat-1" else OK

    console = ScriptedChannel("console", script)
    rig = make_rig(tmp_path, console, concurrency=4)
    head, *rest = await rig.add(3, to="chat-1")
    other = await rig.add(2, to="chat-2")
    results = await rig.worker.process_once()
    assert {(r.id, r.kind) for r in results} == {(head.id, "retry"), (other[0].id, "ok"), (other[1].id, "ok")}
    assert {e.id for e in await rig.queue.list_pending()} == {head.id, *(e.id for e in rest)}


def test_entries_being_read_hold_every_younger_one_back() -> None:
    """At start the listed entries are read in batches, oldest first: an entry whose recipient
    is not known yet may belong to any conversation, so nothing younger goes before it is read."""
    schedule = Schedule()
    schedule.expect(["01", "02"])
    schedule.put("05", _slot("alice"))  # a new reply, written while the listing is read
    assert schedule.pending_count() == 3
    assert schedule.pop_due(0.0) is None
    schedule.resolve(["01"], {"01": _slot("alice")})
    assert schedule.pop_due(0.0) == "01"  # older than everything unread: it goes
    schedule.start("01")
    assert schedule.pop_due(0.0) is None  # "02" is still unread; "05" waits for it and for "01"
    schedule.resolve(["02"], {"02": _slot("bob")})
    assert schedule.pop_due(0.0) == "02"
    schedule.start("02")
    schedule.drop("01")
    schedule.finish("01")
    assert schedule.pop_due(0.0) == "05"
    schedule.resolve(["09"], {})  # never listed again: forgotten, holds nothing
    assert schedule.pending_count() == 2


@pytest.mark.parametrize("disk", ["full", "hung"])
async def test_an_attempt_that_fails_on_disk_holds_its_chat_until_a_rescan_reads_it_again(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, disk: str
) -> None:
    """The head's send failed and its retry could not be written (a full disk), or not within
    the settling bound (a hung one): the entry is left on disk for the next rescan. Until that
    rescan reads it again it still holds its chat; dropped from the schedule at once, the chunk
    after it was sent first."""
    first: list[str] = []

    def script(entry: DeliveryEntry, n: int) -> Outcome:
        if not first:
            first.append(entry.id)
        return Outcome("retry", "HTTP 503") if entry.id == first[0] and n == 1 else OK

    console = ScriptedChannel("console", script)
    rig = make_rig(tmp_path, console, rescan_interval_seconds=5, initial_backoff_seconds=1, max_backoff_seconds=1)
    head, *rest = await rig.add(3, to="chat-1")
    real_retry_later = DeliveryQueue.retry_later
    refused: list[str] = []

    async def full_once(self: DeliveryQueue, claimed: Claimed, reason: str, when: dt.datetime) -> DeliveryEntry:
        if not refused:
            refused.append(claimed.entry.id)
            if disk == "hung":
                await trio.sleep_forever()
            raise OSError(errno.ENOSPC, "No space left on device")
        return await real_retry_later(self, claimed, reason, when)

    monkeypatch.setattr(DeliveryQueue, "retry_later", full_once)
    await rig.run_for(60)
    assert refused == [head.id]
    assert [i for _, i in console.sends] == [head.id, head.id, rest[0].id, rest[1].id]
    assert await rig.queue.list_pending() == []


def test_a_held_entry_holds_its_conversation_until_released() -> None:
    """`hold`: never due, still the head; `release` (a rescan that no longer lists it: gone)
    lets the conversation move on."""
    schedule = Schedule()
    schedule.put("01", _slot("alice"))
    schedule.put("02", _slot("alice"))
    assert schedule.pop_due(0.0) == "01"
    schedule.start("01")
    schedule.drop("01")  # claimed
    schedule.hold("01")  # ... and its settling failed on disk
    schedule.finish("01")
    assert schedule.pop_due(1e9) is None
    assert schedule.held() == {"01"}
    schedule.release({"01"})
    assert schedule.pop_due(0.0) == "02"
