"""The on-disk queue: atomic files, exclusive claims, recovery, quarantine."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import attrs
import pytest
import trio

from trio_gateway.errors import NotFoundError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.entry import DeliveryEntry, Payload, entry_to_json
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.base import Claimed, NotDue
from trio_gateway.storage.group_commit import GroupCommit
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.storage.recovery import claimer_alive

T0 = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)


def make_queue(root: Path, sink: MemorySink | None = None, pid: int | None = None) -> DeliveryQueue:
    log = EventLog([sink if sink is not None else MemorySink()])
    return DeliveryQueue(root, inline, log, pid=pid if pid is not None else os.getpid())


def make_entry(q: DeliveryQueue, when: dt.datetime = T0, to: str = "o9cq80abc@im.wechat") -> DeliveryEntry:
    entry_id = q.new_id(when)
    origin = Origin("openclaw-weixin", to, "bot-1")
    return DeliveryEntry(
        id=entry_id,
        kind="reply",
        channel="openclaw-weixin",
        to=to,
        account_id="bot-1",
        agent_id="main",
        requester_origin=origin,
        payload=Payload("hello"),
        idempotency_key=entry_id,
        created_at=when,
        next_attempt_at=when,
    )


async def claim(q: DeliveryQueue, entry_id: str, now: dt.datetime = T0) -> Claimed:
    claimed = await q.claim(entry_id, now)
    assert isinstance(claimed, Claimed)
    return claimed


async def claim_to_send(q: DeliveryQueue, entry_id: str, now: dt.datetime = T0) -> Claimed:
    claimed = await q.claim_to_send(entry_id, now)
    assert isinstance(claimed, Claimed)
    return claimed


def test_ids_sort_by_creation_time_even_within_one_millisecond(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    times = [T0 + dt.timedelta(microseconds=100 * i) for i in range(50)] + [T0 + dt.timedelta(days=1)]
    ids = [q.new_id(t) for t in times]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 26 for i in ids)


async def test_enqueue_writes_one_whole_camelcase_file(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    files = os.listdir(tmp_path)
    assert files == [f"{entry.id}.json"]  # no temporary file left beside it
    raw = json.loads((tmp_path / files[0]).read_text())
    assert raw["requesterOrigin"]["channel"] == "openclaw-weixin"
    assert raw["nextAttemptAt"].startswith("2026-06-15T03:21:00")
    assert await q.list_pending() == [entry]


async def test_claim_moves_the_file_and_a_second_claim_gets_nothing(tmp_path: Path) -> None:
    a, b = make_queue(tmp_path, pid=os.getpid()), make_queue(tmp_path, pid=os.getppid())
    entry = make_entry(a)
    await a.enqueue(entry)
    claimed = await claim(a, entry.id)
    assert claimed.path == tmp_path / "inflight" / f"{entry.id}.{os.getpid()}.json"
    assert await b.claim(entry.id, T0) is None
    assert await a.list_pending() == []


async def test_claims_racing_in_threads_are_exclusive(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entries = [make_entry(q) for _ in range(100)]
    for e in entries:
        await q.enqueue(e)
    won: list[list[str]] = [[] for _ in range(6)]

    def worker(n: int) -> None:
        racer = make_queue(tmp_path, pid=10_000 + n)
        for e in entries:
            if isinstance(racer._claim_sync(e.id, T0), Claimed):
                won[n].append(e.id)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_won = [i for w in won for i in w]
    assert sorted(all_won) == sorted(e.id for e in entries)  # each exactly once


async def test_claim_of_an_entry_that_is_not_due_puts_it_back(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = attrs.evolve(make_entry(q), next_attempt_at=T0 + dt.timedelta(seconds=30))
    await q.enqueue(entry)
    result = await q.claim(entry.id, T0)
    assert result == NotDue(entry.next_attempt_at)
    assert [e.id for e in await q.list_pending()] == [entry.id]


async def test_retry_later_counts_release_does_not(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    c = await claim_to_send(q, entry.id)
    later = T0 + dt.timedelta(seconds=5)
    await q.retry_later(c, "HTTP 503", later)
    (pending,) = await q.list_pending()
    assert (pending.attempts, pending.last_error, pending.next_attempt_at) == (1, "HTTP 503", later)
    assert pending.send_started_at is None

    c = await claim_to_send(q, entry.id, later)
    await q.release(c)
    (pending,) = await q.list_pending()
    assert pending.attempts == 1
    assert pending.send_started_at == later  # kept: the next send may be a duplicate


async def test_ack_deletes_only_the_delivered_entry(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    one, two = make_entry(q), make_entry(q)
    await q.enqueue(one)
    await q.enqueue(two)
    await q.ack(await claim(q, one.id))
    assert [e.id for e in await q.list_pending()] == [two.id]
    assert os.listdir(tmp_path / "inflight") == []


async def test_dead_letter_and_retry_dead(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = attrs.evolve(make_entry(q), attempts=7)
    await q.enqueue(entry)
    await q.dead_letter(await claim(q, entry.id), "feishu_code 99992360 Invalid ids", T0)
    (dead,) = await q.list_failed()
    assert (dead.failed_reason, dead.failed_at, dead.attempts) == ("feishu_code 99992360 Invalid ids", T0, 7)
    assert await q.list_pending() == []

    later = T0 + dt.timedelta(hours=1)
    back = await q.retry_dead(entry.id, later)
    assert (back.attempts, back.failed_reason, back.retried_at, back.next_attempt_at) == (0, None, later, later)
    assert await q.list_failed() == []
    assert [e.id for e in await q.list_pending()] == [entry.id]
    with pytest.raises(NotFoundError):
        await q.retry_dead("nope", later)


async def test_unparseable_files_are_quarantined_never_deleted(tmp_path: Path) -> None:
    sink = MemorySink()
    q = make_queue(tmp_path, sink)
    good = make_entry(q)
    await q.enqueue(good)
    (tmp_path / "torn.json").write_text('{"id": ')
    wrong_type = entry_to_json(make_entry(q)) | {"attempts": "3"}
    (tmp_path / f"{wrong_type['id']}.json").write_text(json.dumps(wrong_type))
    assert [e.id for e in await q.list_pending()] == [good.id]
    assert sorted(os.listdir(tmp_path / "quarantine")) == sorted(["torn.json", f"{wrong_type['id']}.json"])
    assert (tmp_path / "quarantine" / "torn.json").read_text() == '{"id": '
    assert len(sink.tagged("QUARANTINE")) == 2
    # A second file of the same name does not overwrite the first.
    (tmp_path / "torn.json").write_text("again")
    await q.list_pending()
    assert (tmp_path / "quarantine" / "torn.json.1").read_text() == "again"


async def test_an_entry_deleted_by_hand_is_skipped(tmp_path: Path) -> None:
    sink = MemorySink()
    q = make_queue(tmp_path, sink)
    entry = make_entry(q)
    await q.enqueue(entry)
    c = await claim(q, entry.id)
    c.path.unlink()  # an operator's rm while the entry was being sent
    await q.retry_later(c, "HTTP 503", T0)
    assert await q.list_pending() == []  # not resurrected
    assert any("deleted by hand" in e.message for e in sink.events)
    # And deleted while pending: the claim finds nothing.
    other = make_entry(q)
    await q.enqueue(other)
    q.pending_path(other.id).unlink()
    assert await q.claim(other.id, T0) is None


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(proc.stdout)


async def test_recover_returns_entries_of_dead_claimers_only(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    dead, alive, mine_old, mine_now = (make_entry(q) for _ in range(4))
    for e in (dead, alive, mine_old, mine_now):
        await q.enqueue(e)
    await claim(make_queue(tmp_path, pid=_dead_pid()), dead.id)
    await claim(make_queue(tmp_path, pid=os.getppid()), alive.id)
    await claim(make_queue(tmp_path), mine_old.id)  # an earlier life of this process
    await claim(q, mine_now.id)
    recovered = await q.recover()
    assert sorted(recovered) == sorted([dead.id, mine_old.id])
    assert sorted(e.id for e in await q.list_pending()) == sorted([dead.id, mine_old.id])
    assert len(await q.list_inflight()) == 2


def test_a_reused_pid_is_not_the_claimer() -> None:
    # Our own process started before now: a claim written an hour ago cannot be ours.
    assert claimer_alive(os.getpid(), dt.datetime.now().timestamp())
    assert not claimer_alive(os.getpid(), dt.datetime.now().timestamp() - 3600 * 24 * 365)


async def test_recover_removes_temporaries_of_dead_claimers_only(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    inflight = tmp_path / "inflight"
    inflight.mkdir()
    dead = inflight / f".01ABC.{_dead_pid()}.json.x1y2.tmp"
    alive = inflight / f".01ABD.{os.getppid()}.json.x1y2.tmp"
    dead.write_text("{")
    alive.write_text("{")
    await q.recover()
    assert not dead.exists()
    assert alive.exists()


# --- the group-committed hot path -------------------------------------------------------------


async def test_claim_to_send_records_the_start_in_the_name_and_recovery_keeps_it(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    sent_at = T0 + dt.timedelta(seconds=1)
    claimed = await q.claim_to_send(entry.id, sent_at)
    assert isinstance(claimed, Claimed)
    assert (claimed.entry.send_started_at, claimed.resend_of) == (sent_at, None)
    ms = int(sent_at.timestamp() * 1000)
    assert claimed.path == tmp_path / "inflight" / f"{entry.id}.{os.getpid()}.{ms}.json"
    (shown,) = await q.list_inflight()
    assert shown.send_started_at == sent_at  # `delivery list` sees the send in flight

    # A crash now: the next life of this process recovers it with the start written in.
    again = make_queue(tmp_path)
    assert await again.recover() == [entry.id]
    (pending,) = await again.list_pending()
    assert pending.send_started_at == sent_at
    resent = await again.claim_to_send(entry.id, T0 + dt.timedelta(minutes=1))
    assert isinstance(resent, Claimed)
    assert resent.resend_of == sent_at  # the worker logs this send as a possible duplicate


async def test_a_claim_not_marked_recovers_as_not_started(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    await claim(q, entry.id)  # a crash between the claim and the mark
    again = make_queue(tmp_path)
    await again.recover()
    (pending,) = await again.list_pending()
    assert pending.send_started_at is None


async def test_concurrent_claims_and_acks_share_one_directory_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(tmp_path)
    entries = [make_entry(q) for _ in range(10)]
    for e in entries:
        await q.enqueue(e)
    synced: list[Path] = []
    monkeypatch.setattr("trio_gateway.storage.queue.fsync_dir", synced.append)
    claims: list[Claimed] = []

    async def send_one(entry_id: str) -> None:
        claimed = await q.claim_to_send(entry_id, T0)
        assert isinstance(claimed, Claimed)
        claims.append(claimed)

    async with trio.open_nursery() as nursery:
        for e in entries:
            nursery.start_soon(send_one, e.id)
    assert synced == [tmp_path / "inflight"]
    synced.clear()
    async with trio.open_nursery() as nursery:
        for c in claims:
            nursery.start_soon(q.ack, c)
    assert synced == [tmp_path / "inflight"]
    assert os.listdir(tmp_path / "inflight") == []
    assert await q.list_pending() == []


async def test_a_group_commit_withdraws_cancelled_callers_and_reports_errors_to_all() -> None:
    batches: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        await trio.lowlevel.checkpoint()
        batches.append(items)
        if 13 in items:
            raise OSError("disk full")
        return [i * 2 for i in items]

    group: GroupCommit[int, int] = GroupCommit(run)
    results: dict[int, int] = {}

    async def submit(i: int) -> None:
        results[i] = await group.submit(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(submit, i)
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()  # no wait without a bound: cancelled callers leave
    assert results == {}  # each left before its item reached the disk: nothing was written
    assert await group.submit(5) == 10

    errors: list[BaseException] = []

    async def failing(i: int) -> None:
        try:
            await group.submit(i)
        except OSError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        for i in (12, 13):
            nursery.start_soon(failing, i)
    assert len(errors) == 2
    assert await group.submit(4) == 8  # and the group still works afterwards


async def test_a_claim_reads_what_is_on_disk_not_what_we_wrote(tmp_path: Path) -> None:
    q = make_queue(tmp_path)
    entry = make_entry(q)
    await q.enqueue(entry)
    # Another process rewrites it (as `delivery repair` would) before our claim.
    changed = attrs.evolve(entry, to="o9cq80xyz@im.wechat", attempts=3)
    q.pending_path(entry.id).write_text(json.dumps(entry_to_json(changed)))
    claimed = await claim(q, entry.id)
    assert claimed.entry == changed


async def test_pending_ids_lists_without_parsing_and_a_claim_quarantines_junk(tmp_path: Path) -> None:
    sink = MemorySink()
    q = make_queue(tmp_path, sink)
    entry = make_entry(q)
    await q.enqueue(entry)
    (tmp_path / "torn.json").write_text('{"id": ')
    (tmp_path / ".torn.json.x1.tmp").write_text("{")  # a write in progress: not listed
    assert await q.pending_ids() == sorted([entry.id, "torn"])
    assert await q.claim_to_send("torn", T0) is None
    assert (tmp_path / "quarantine" / "torn.json").read_text() == '{"id": '
    assert os.listdir(tmp_path / "inflight") == []
    assert sink.tagged("QUARANTINE")


async def test_concurrent_enqueues_share_one_directory_fsync_after_every_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(tmp_path)
    (tmp_path / "inflight").mkdir(parents=True)
    entries = [make_entry(q) for _ in range(10)]
    returned: list[str] = []
    synced: list[tuple[Path, list[str], int]] = []

    def fake_fsync_dir(directory: Path) -> None:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".json"))
        synced.append((directory, names, len(returned)))

    monkeypatch.setattr("trio_gateway.storage.queue.fsync_dir", fake_fsync_dir)

    async def enqueue(entry: DeliveryEntry) -> None:
        await q.enqueue(entry)
        returned.append(entry.id)

    async with trio.open_nursery() as nursery:
        for e in entries:
            nursery.start_soon(enqueue, e)
    # One folder fsync, after all ten renames, before any caller was told its entry is written.
    assert synced == [(tmp_path, sorted(f"{e.id}.json" for e in entries), 0)]
    assert sorted(returned) == sorted(e.id for e in entries)
    assert [e.id for e in await q.list_pending()] == sorted(e.id for e in entries)


async def test_an_enqueue_batch_that_fails_fails_every_caller_in_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = make_queue(tmp_path)
    entries = [make_entry(q) for _ in range(3)]

    def broken(directory: Path) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr("trio_gateway.storage.queue.fsync_dir", broken)
    failed: list[str] = []

    async def enqueue(entry: DeliveryEntry) -> None:
        with pytest.raises(OSError, match="fsync failed"):
            await q.enqueue(entry)
        failed.append(entry.id)

    async with trio.open_nursery() as nursery:
        for e in entries:
            nursery.start_soon(enqueue, e)
    assert sorted(failed) == sorted(e.id for e in entries)  # none was reported durable
