"""The outbox, the worker and repair, on trio's MockClock with scripted in-test channels."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path

import attrs
import pytest
import trio

from trio_gateway.channels.base import OK, Outcome
from trio_gateway.channels.registry import check_address
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.delivery.repair import repair
from trio_gateway.delivery.scheduler import DeadLetter, Reroute, plan_repair
from trio_gateway.delivery.worker import DeliveryWorker
from trio_gateway.errors import DeliveryValidationError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.config import AgentConfig, DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.base import Claimed
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

WX = Origin("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
AGENTS = {"main": AgentConfig(account_id="bot-1", channels=["feishu", "openclaw-weixin"])}
Script = Callable[[DeliveryEntry, int], Outcome]


@attrs.define
class ScriptedChannel:
    """Answers each send with `script(entry, n)` (n = this entry's send count) after `delay`."""

    name: str
    script: Script = lambda _e, _n: OK
    delay: float = 0.0
    deduplicates: bool = True
    sends: list[tuple[float, str]] = attrs.Factory(list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def send(self, entry: DeliveryEntry) -> Outcome:
        self.sends.append((trio.current_time(), entry.id))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await trio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return self.script(entry, sum(1 for _, i in self.sends if i == entry.id))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()

    def send_times(self) -> list[float]:
        return [t for t, _ in self.sends]


@attrs.define
class Channels:
    by_name: dict[str, ScriptedChannel]

    def get(self, channel: str, account_id: str | None) -> ScriptedChannel | None:
        return self.by_name.get(channel)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define
class Rig:
    queue: DeliveryQueue
    worker: DeliveryWorker
    outbox: Outbox
    sink: MemorySink
    work: WorkRegistry

    async def add(
        self, n: int = 1, channel: str = "console", to: str = "someone", *, spread: bool = False
    ) -> list[DeliveryEntry]:
        """`n` entries to `to`, or with `spread` each to its own recipient (`to-<i>`): one
        conversation is sent one entry at a time (SPEC 15), different ones in parallel."""
        return [
            await self.outbox.submit_manual(channel, f"{to}-{i}" if spread else to, None, "main", f"text {i}")
            for i in range(n)
        ]

    async def run_for(self, seconds: float) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.worker.run)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()

    def messages(self, needle: str) -> list[str]:
        return [e.text() for e in self.sink.events if needle in e.text()]


def make_rig(tmp_path: Path, *channels: ScriptedChannel, **config: float) -> Rig:
    sink = MemorySink()
    log = EventLog([sink])
    queue = DeliveryQueue(tmp_path / "delivery-queue", inline, log)
    work = WorkRegistry(log)
    clock = WallClock.start(dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC))
    cfg = DeliveryConfig(**config)  # type: ignore[arg-type]
    worker = DeliveryWorker(queue, Channels({c.name: c for c in channels}), cfg, clock, log, work, random.Random(1))
    outbox = Outbox(queue, AGENTS, clock, log, on_enqueued=worker.notify)
    return Rig(queue, worker, outbox, sink, work)


def retry(reason: str = "HTTP 503", retry_after: float | None = None) -> Outcome:
    return Outcome("retry", reason, retry_after=retry_after)


# --- the outbox -------------------------------------------------------------------------------


async def test_submit_routes_to_the_requester_origin_and_writes_it_durably(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    entry = await rig.outbox.submit(kind="subagent_failure", origin=WX, agent_id="main", text="it failed")
    assert (entry.channel, entry.to, entry.account_id) == ("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
    assert entry.requester_origin == Origin("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
    assert [e.id for e in await rig.queue.list_pending()] == [entry.id]
    assert entry.idempotency_key == entry.id


async def test_submit_refuses_the_seed_entry_and_writes_nothing(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    # The seed's shape: no origin channel, so the agent's first channel (feishu), WeChat address.
    origin = Origin(channel=None, to="o9cq80abc@im.wechat")
    with pytest.raises(DeliveryValidationError, match="channel=feishu"):
        await rig.outbox.submit(kind="subagent_failure", origin=origin, agent_id="main", text="x")
    assert await rig.queue.list_pending() == []
    assert rig.messages("[VALIDATION] Channel-address mismatch: channel=feishu, address=o9cq80abc@im.wechat")
    assert rig.messages("first channel feishu")  # the fallback is a WARN


async def test_a_new_entry_is_sent_at_once_not_at_the_next_rescan(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    console = ScriptedChannel("console")
    rig = make_rig(tmp_path, console, rescan_interval_seconds=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.worker.run)
        await trio.sleep(10)
        entry = (await rig.add())[0]
        await trio.sleep(0.5)
        assert console.sends == [(10.0, entry.id)]
        nursery.cancel_scope.cancel()
    assert await rig.queue.list_pending() == []
    assert rig.messages(f"[DELIVERY] Channel=console id={entry.id} to=someone Success")


async def test_files_written_by_another_process_are_found_by_the_rescan(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    console = ScriptedChannel("console")
    rig = make_rig(tmp_path, console, rescan_interval_seconds=5)
    other = Outbox(rig.queue, AGENTS, rig.worker.clock, EventLog())  # no notify: another process
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.worker.run)
        await trio.sleep(1)
        await other.submit_manual("console", "x", None, "main", "hi")
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert console.send_times() == [5.0]


# --- outcomes ---------------------------------------------------------------------------------


async def test_permanent_rejection_goes_to_failed_at_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    feishu = ScriptedChannel("feishu", lambda _e, _n: Outcome("permanent", "HTTP 400 feishu_code 99992360 Invalid ids"))
    rig = make_rig(tmp_path, feishu)
    await rig.add(channel="feishu", to="ou_abc")
    results = await rig.worker.process_once()
    assert [r.kind for r in results] == ["failed"]
    (dead,) = await rig.queue.list_failed()
    assert dead.failed_reason == "HTTP 400 feishu_code 99992360 Invalid ids"
    assert dead.attempts == 1  # the attempt was made and answered: it counts
    assert len(feishu.sends) == 1
    assert rig.messages("Failed: HTTP 400 feishu_code 99992360 Invalid ids")


async def test_retries_back_off_in_virtual_time_then_succeed(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    console = ScriptedChannel("console", lambda _e, n: OK if n == 4 else retry())
    rig = make_rig(tmp_path, console, initial_backoff_seconds=1, max_backoff_seconds=60)
    await rig.add()
    await rig.run_for(100)
    times = console.send_times()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(times) == 4
    for k, gap in enumerate(gaps, 1):  # k-th wait: uniform between initial and initial * 2**k
        assert 1.0 <= gap <= 2.0**k
    assert await rig.queue.list_pending() == []
    assert len(rig.messages("Retry")) == 3
    assert rig.messages("Retry 1/20 in")


async def test_rate_limit_waits_at_least_retry_after(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    limited = Outcome("rate_limited", "HTTP 429", retry_after=30)
    console = ScriptedChannel("console", lambda _e, n: limited if n == 1 else OK)
    rig = make_rig(tmp_path, console)
    await rig.add()
    await rig.run_for(100)
    first, second = console.send_times()
    assert 30.0 <= second - first <= 31.0


async def test_max_attempts_dead_letters(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    console = ScriptedChannel("console", lambda _e, _n: retry())
    rig = make_rig(tmp_path, console, max_attempts=3)
    await rig.add()
    await rig.run_for(200)
    assert len(console.sends) == 3
    (dead,) = await rig.queue.list_failed()
    assert dead.attempts == 3
    assert dead.failed_reason is not None
    assert "maxAttempts=3" in dead.failed_reason


async def test_total_retry_budget_dead_letters_before_it_is_exceeded(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    console = ScriptedChannel("console", lambda _e, _n: retry())
    rig = make_rig(tmp_path, console, initial_backoff_seconds=4, max_backoff_seconds=8, max_total_retry_seconds=20)
    await rig.add()
    await rig.run_for(200)
    assert 2 <= len(console.sends) <= 5
    assert max(console.send_times()) <= 20.0
    (dead,) = await rig.queue.list_failed()
    assert "maxTotalRetrySeconds=20" in (dead.failed_reason or "")


async def test_no_configured_channel_dead_letters_with_a_clear_reason(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    await rig.add(channel="slack", to="C01234567")
    (result,) = await rig.worker.process_once()
    assert result.kind == "failed"
    (dead,) = await rig.queue.list_failed()
    assert dead.failed_reason == "no channel slack with account bot-1 is configured"


async def test_a_paused_account_keeps_its_entries_pending_and_uncounted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    wx = ScriptedChannel("openclaw-weixin", lambda _e, _n: Outcome("paused", "errcode -14 session expired"))
    console = ScriptedChannel("console")
    rig = make_rig(tmp_path, wx, console, concurrency=1)  # one at a time: sends already in flight would land too
    await rig.add(3, channel="openclaw-weixin", to="o9cq80abc@im.wechat")
    await rig.add(2)
    await rig.run_for(60)
    assert len(console.sends) == 2
    assert len(wx.sends) == 1  # the first answer paused the account; the others were not tried
    pending = await rig.queue.list_pending()
    assert len(pending) == 3
    assert all(e.attempts == 0 for e in pending)
    assert len(rig.messages("Paused: errcode -14 session expired")) == 1
    assert all(e.last_error == "paused: errcode -14 session expired" for e in pending if e.id == wx.sends[0][1])


async def test_an_attempt_past_its_timeout_is_a_counted_retry(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    stalled = ScriptedChannel("console", delay=math.inf)
    rig = make_rig(tmp_path, stalled, attempt_timeout_seconds=7)
    await rig.add()
    with trio.fail_after(60):  # virtual: the attempt's own bound (7 s) must end it first
        (result,) = await rig.worker.process_once()
    assert result.kind == "retry"
    assert trio.current_time() == pytest.approx(7.0)
    (entry,) = await rig.queue.list_pending()
    assert (entry.attempts, entry.last_error) == (1, "attempt timed out after 7s")


# --- concurrency, drains and cancellation ----------------------------------------------------


async def test_concurrency_bound_is_respected(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    console = ScriptedChannel("console", delay=1.0)
    rig = make_rig(tmp_path, console, concurrency=4)
    await rig.add(30, spread=True)
    await rig.run_for(20)
    assert len(console.sends) == 30
    assert console.max_in_flight == 4
    assert max(console.send_times()) == pytest.approx(7.0)  # 30 sends, 4 at a time, 1 s each


async def test_a_drain_during_backoff_waits_is_immediate_and_loses_nothing(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    console = ScriptedChannel("console", lambda _e, _n: retry())
    rig = make_rig(tmp_path, console, initial_backoff_seconds=30, max_backoff_seconds=60)
    await rig.add(20, spread=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.worker.run)
        await trio.sleep(5)  # every entry has failed once and waits 30..60 s
        assert len(console.sends) == 20
        assert rig.work.units() == []  # waiting retries are not work
        cancelled_at = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() == cancelled_at
    pending = await rig.queue.list_pending()
    assert len(pending) == 20
    assert all(e.attempts == 1 for e in pending)
    assert await rig.queue.list_inflight() == []


async def test_cancelling_mid_attempt_releases_without_counting(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    stalled = ScriptedChannel("console", delay=math.inf, deduplicates=False)
    rig = make_rig(tmp_path, stalled)
    (entry,) = await rig.add()
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.worker.run)
        await trio.sleep(3)
        assert [u.kind for u in rig.work.units()] == ["delivery_attempt"]
        nursery.cancel_scope.cancel()
    assert rig.work.units() == []
    (back,) = await rig.queue.list_pending()
    assert back.attempts == 0
    assert back.send_started_at is not None
    assert rig.messages("Released: attempt cut off, not counted")

    # The next worker sends it again, with the same key, and says it may be a duplicate.
    rig2 = make_rig(tmp_path, ScriptedChannel("console", deduplicates=False))
    (result,) = await rig2.worker.process_once()
    assert result.kind == "ok"
    assert rig2.messages("Possible duplicate")
    assert rig2.messages(f"idempotencyKey={entry.idempotency_key}")


# --- repair -----------------------------------------------------------------------------------


def _seed_entry(rig: Rig, origin: Origin | None, channel: str, to: str) -> DeliveryEntry:
    now = rig.worker.clock.now()
    entry_id = rig.queue.new_id(now)
    return DeliveryEntry(
        entry_id, "subagent_failure", channel, to, "bot-1", "main", origin, Payload("x"), entry_id, now, now
    )


def test_plan_repair_reroutes_to_the_requester_origin() -> None:
    rig_entry = DeliveryEntry(
        "01", "subagent_failure", "feishu", "o9cq80abc@im.wechat", "bot-1", "main",
        Origin("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1"), Payload("x"), "k",
        dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )  # fmt: skip
    action = plan_repair(rig_entry, AGENTS, check_address)
    assert isinstance(action, Reroute)
    assert (action.channel, action.to, action.account_id) == ("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
    sound = attrs.evolve(rig_entry, channel="openclaw-weixin")
    assert plan_repair(sound, AGENTS, check_address) is None


async def test_repair_over_a_seed_style_queue(tmp_path: Path) -> None:
    rig = make_rig(tmp_path)
    wx_origin = Origin("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
    misrouted = [_seed_entry(rig, wx_origin, "feishu", "o9cq80abc@im.wechat") for _ in range(5)]
    orphan = _seed_entry(rig, None, "feishu", "x9@im.bot")
    fine = _seed_entry(rig, None, "console", "someone")
    for e in [*misrouted, orphan, fine]:
        await rig.queue.enqueue(attrs.evolve(e, attempts=12))

    dry = await repair(rig.queue, AGENTS, rig.worker.clock, dry_run=True)
    assert len(dry) == 6
    assert not any(r.done for r in dry)
    assert {e.channel for e in await rig.queue.list_pending()} == {"feishu", "console"}

    reports = await repair(rig.queue, AGENTS, rig.worker.clock, dry_run=False)
    assert all(r.done for r in reports)
    pending = {e.id: e for e in await rig.queue.list_pending()}
    for e in misrouted:
        fixed = pending[e.id]
        assert (fixed.channel, fixed.to, fixed.attempts) == ("openclaw-weixin", "o9cq80abc@im.wechat", 0)
    assert pending[fine.id].channel == "console"
    (dead,) = await rig.queue.list_failed()
    assert dead.id == orphan.id
    assert "no requester origin" in (dead.failed_reason or "")
    assert isinstance(plan_repair(orphan, AGENTS, check_address), DeadLetter)


# --- start-up from the directory listing ------------------------------------------------------


async def test_start_up_reads_each_listed_entry_before_scheduling_it_and_keeps_its_order(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At start every pending file is read (its recipient decides its place: SPEC 15) before any
    claim; one recipient's entries go oldest first, and one waiting on a backoff holds the rest."""
    console = ScriptedChannel("console")
    rig = make_rig(tmp_path, console, concurrency=4, rescan_interval_seconds=3600)
    writer = Outbox(rig.queue, AGENTS, rig.worker.clock, EventLog())  # an earlier life: no notify
    entries = [await writer.submit_manual("console", "x", None, "main", f"m{i}") for i in range(5)]
    later = attrs.evolve(entries[2], next_attempt_at=entries[2].next_attempt_at + dt.timedelta(seconds=30))
    await rig.queue.enqueue(later)  # waiting on a backoff
    (tmp_path / "delivery-queue" / "torn.json").write_text("{")

    def no_full_scan(_self: DeliveryQueue) -> list[DeliveryEntry]:
        raise AssertionError("start-up reads the listed entries by id, not the whole folder")

    monkeypatch.setattr(DeliveryQueue, "_scan_sync", no_full_scan)
    async with trio.open_nursery() as nursery:
        await nursery.start(rig.worker.run)
        assert rig.worker.pending_count() == 6
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    ids = [e.id for e in entries]
    assert console.sends == [(0.0, ids[0]), (0.0, ids[1]), (30.0, ids[2]), (30.0, ids[3]), (30.0, ids[4])]
    assert (tmp_path / "delivery-queue" / "quarantine" / "torn.json").exists()
    assert rig.worker.pending_count() == 0


async def test_a_listed_entry_of_a_paused_account_is_held_uncounted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    wx = ScriptedChannel("openclaw-weixin", lambda _e, _n: Outcome("paused", "errcode -14 session expired"))
    rig = make_rig(tmp_path, wx, concurrency=1, rescan_interval_seconds=3600)
    writer = Outbox(rig.queue, AGENTS, rig.worker.clock, EventLog())
    for _ in range(3):
        await writer.submit_manual("openclaw-weixin", "o9cq80abc@im.wechat", None, "main", "hi")
    await rig.run_for(60)
    assert len(wx.sends) == 1
    pending = await rig.queue.list_pending()
    assert [e.attempts for e in pending] == [0, 0, 0]
    assert all(e.send_started_at is None for e in pending)  # a hold clears the mark it was claimed with


async def test_a_marked_entry_of_a_dead_worker_is_resent_with_its_key_as_a_possible_duplicate(
    tmp_path: Path,
) -> None:
    rig = make_rig(tmp_path, ScriptedChannel("console", deduplicates=False))
    (entry,) = await rig.add()
    dead = DeliveryQueue(rig.queue.root, inline, EventLog(), pid=2**22 + 1)  # above any pid_max
    assert isinstance(await dead.claim_to_send(entry.id, rig.worker.clock.now()), Claimed)
    (result,) = await rig.worker.process_once()
    assert result.kind == "ok"
    assert rig.messages(f"id={entry.id} Possible duplicate")
    assert rig.messages(f"idempotencyKey={entry.idempotency_key}")
