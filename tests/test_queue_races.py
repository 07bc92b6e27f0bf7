"""The queue under concurrent recovery and bad files (issue 9, items 3 and 7).

`recover()` runs in the rescan, in another thread from the claims and acks of the same
process. These tests put a recovery exactly in each window a thread switch could open.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from test_delivery import ScriptedChannel, make_rig
from test_queue import T0, make_entry, make_queue

from trio_gateway.log import MemorySink
from trio_gateway.storage.base import Claimed, OutcomeUnknown
from trio_gateway.storage.group_commit import GroupCommit
from trio_gateway.storage.queue import DeliveryQueue


def _interleave(q: DeliveryQueue, monkeypatch: pytest.MonkeyPatch, method: str) -> list[str]:
    """Run `q.recover` (synchronously, as the rescan thread would) right before `method`."""
    recovered: list[str] = []
    original: Callable[..., object] = getattr(DeliveryQueue, method)

    def racing(self: DeliveryQueue, *args: object, **kwargs: object) -> object:
        recovered.extend(q._recover_sync())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(DeliveryQueue, method, racing)  # slotted class: patched on the class
    return recovered


async def test_recover_between_claim_rename_and_read_leaves_our_claim_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    recovered = _interleave(q, monkeypatch, "_read_claimed_sync")
    claimed = await q.claim_to_send(entry.id, T0)
    # Before the fix: our own fresh claim went back to pending, and the read raised
    # FileNotFoundError, which took the worker (and the process) down.
    assert isinstance(claimed, Claimed)
    assert recovered == []
    assert await q.pending_ids() == []


async def test_recover_during_ack_cannot_resurrect_a_delivered_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    claimed = await q.claim_to_send(entry.id, T0)
    assert isinstance(claimed, Claimed)
    real_unlink = Path.unlink

    def unlink_after_recovery(path: Path, missing_ok: bool = False) -> None:
        q._recover_sync()
        real_unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_after_recovery)
    await q.ack(claimed)
    monkeypatch.undo()
    # Before the fix the ack released the claim before deleting the file: recovery moved the
    # delivered entry back to pending, and it was sent again.
    assert await q.pending_ids() == []
    assert await q.list_inflight() == []


async def test_recover_during_retry_rewrite_keeps_one_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    claimed = await q.claim_to_send(entry.id, T0)
    assert isinstance(claimed, Claimed)
    recovered = _interleave(q, monkeypatch, "_rewrite_sync")
    await q.retry_later(claimed, "HTTP 503", T0 + dt.timedelta(seconds=5))
    assert recovered == []
    [pending] = await q.list_pending()
    assert pending.attempts == 1


async def test_a_vanished_claim_is_skipped_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    original = DeliveryQueue._read_claimed_sync

    def deleted_by_hand(self: DeliveryQueue, entry_id: str, path: Path) -> object:
        path.unlink()
        return original(self, entry_id, path)

    monkeypatch.setattr(DeliveryQueue, "_read_claimed_sync", deleted_by_hand)
    assert await q.claim_to_send(entry.id, T0) is None


def _write_raw(q: DeliveryQueue, entry_id: str, data: dict[str, object]) -> None:
    q.root.mkdir(parents=True, exist_ok=True)
    q.pending_path(entry_id).write_text(json.dumps(data))


async def test_a_naive_next_attempt_at_is_quarantined_not_a_crash(tmp_path: Path) -> None:
    sink = MemorySink()
    q = make_queue(tmp_path, sink)
    good, bad = make_entry(q), make_entry(q)
    await q.enqueue(good)
    await q.enqueue(bad)
    raw = json.loads(q.pending_path(bad.id).read_text())
    raw["nextAttemptAt"] = "2026-06-15T03:21:00"  # no offset
    q.pending_path(bad.id).write_text(json.dumps(raw))
    assert [e.id for e in await q.list_pending()] == [good.id]
    assert (q.quarantine_dir / f"{bad.id}.json").exists()
    assert "timezone" in sink.tagged("QUARANTINE")[0].message
    # The claim path too (a file rewritten after the listing).
    await q.enqueue(bad)
    q.pending_path(bad.id).write_text(json.dumps(raw))
    assert await q.claim_to_send(bad.id, T0) is None
    assert isinstance(await q.claim_to_send(good.id, T0), Claimed)


async def test_a_directory_named_like_an_entry_is_quarantined(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    good = make_entry(q)
    await q.enqueue(good)
    bogus = q.new_id(T0)
    q.pending_path(bogus).mkdir()
    (q.pending_path(bogus) / "inside").write_text("kept")
    assert [e.id for e in await q.list_pending()] == [good.id]
    assert (q.quarantine_dir / f"{bogus}.json" / "inside").read_text() == "kept"
    q.pending_path(bogus).mkdir()
    assert await q.claim_to_send(bogus, T0) is None
    assert (q.quarantine_dir / f"{bogus}.json.1").is_dir()
    assert await q.peek([good.id]) == {good.id: good}
    assert isinstance(await q.claim_to_send(good.id, T0), Claimed)


async def test_a_directory_in_inflight_is_recovered_then_quarantined(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    bogus = q.new_id(T0)
    q.inflight_dir.mkdir(parents=True)
    (q.inflight_dir / f"{bogus}.{os.getpid() + 10_000_000}.json").mkdir()
    await q.recover()
    assert await q.claim_to_send(bogus, T0) is None
    assert (q.quarantine_dir / f"{bogus}.json").is_dir()


async def test_a_hung_batch_tells_every_caller_outcome_unknown_within_the_bound(
    autojump_clock: trio.abc.Clock,
) -> None:
    hang = trio.Event()

    async def run(items: list[int]) -> list[int]:
        if not hang.is_set():
            await trio.sleep_forever()  # an abandonable thread that never returns
        return [i * 2 for i in items]

    group: GroupCommit[int, int] = GroupCommit(run, timeout=3.0)
    outcomes: dict[int, str] = {}

    async def submit(i: int) -> None:
        try:
            outcomes[i] = str(await group.submit(i))
        except OutcomeUnknown:
            outcomes[i] = "unknown"

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(submit, i)
    assert outcomes == {0: "unknown", 1: "unknown", 2: "unknown", 3: "unknown"}
    assert trio.current_time() - start == pytest.approx(3.0)
    hang.set()  # the disk answers again: the group is not wedged
    assert await group.submit(7) == 14


async def test_an_enqueue_retried_after_an_unknown_outcome_writes_one_entry(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    q._uncertain.add(entry.id)  # as if the first enqueue's caller had been cut off
    await q.enqueue(entry)
    claimed = await q.claim_to_send(entry.id, T0)
    assert isinstance(claimed, Claimed)
    q._uncertain.add(entry.id)
    await q.enqueue(entry)  # already claimed (inflight): not written again
    assert await q.pending_ids() == []


async def test_a_claim_whose_caller_was_cut_is_recovered_at_the_next_rescan(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The soak's two lost entries: attempts cut while their claim batch was on disk (a restart
    cancelling the worker) left claims nobody would finish, which `recover()` skipped as live."""
    rig = make_rig(tmp_path, ScriptedChannel("console"))

    async def slow_disk(fn: Callable[[], object]) -> object:
        result = fn()  # the batch lands on disk ...
        await trio.sleep(1)  # ... but its thread answers late
        return result

    rig.queue.runner = slow_disk  # type: ignore[assignment]
    entries = await rig.add(3)
    async with trio.open_nursery() as nursery:
        for entry in entries:
            nursery.start_soon(rig.worker.attempt, entry.id)
        await trio.sleep(0.5)
        nursery.cancel_scope.cancel()  # the worker is cancelled mid-batch
    assert not any(rig.queue.holds(e.id) for e in entries)
    assert sorted(await rig.queue.recover()) == sorted(e.id for e in entries)
    assert sorted(await rig.queue.pending_ids()) == sorted(e.id for e in entries)
