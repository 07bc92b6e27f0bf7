"""The worker's pure decisions (`delivery.scheduler`), asked directly: times are plain numbers,
no trio, no disk. The worker's tests (`test_delivery.py`) cover the same rules end to end."""

from __future__ import annotations

import ast
import datetime as dt
import math
import random
from pathlib import Path

from trio_gateway.delivery import scheduler
from trio_gateway.delivery.scheduler import (
    LISTED,
    PAUSE_PROBE_SECONDS,
    GiveUp,
    RetryIn,
    Schedule,
    Slot,
    plan_retry,
)
from trio_gateway.policy.config import DeliveryConfig
from trio_gateway.policy.entry import DeliveryEntry, Payload

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_the_oldest_due_id_comes_first_and_a_later_one_waits() -> None:
    schedule = Schedule()
    schedule.put("b", Slot(5.0, "telegram", None))
    schedule.put("a", Slot(1.0, "telegram", None))
    schedule.put("c", Slot(20.0, "telegram", None))
    assert schedule.pop_due(10.0) == "a"
    schedule.start("a")
    assert schedule.pop_due(10.0) == "b"
    schedule.start("b")
    assert schedule.pop_due(10.0) is None
    assert schedule.next_due() == 20.0


def test_a_paused_accounts_entry_is_re_timed_to_the_pause_end_not_returned() -> None:
    schedule = Schedule()
    schedule.put("held", Slot(0.0, "openclaw-weixin", "bot-1"))
    schedule.put("other", Slot(0.0, "openclaw-weixin", "bot-2"))
    assert schedule.pause("openclaw-weixin", "bot-1", now=10.0) is True
    assert schedule.pause("openclaw-weixin", "bot-1", now=11.0) is False  # still paused: said once
    assert schedule.pop_due(12.0) == "other"
    schedule.start("other")
    assert schedule.pop_due(12.0) is None
    assert schedule.next_due() == 11.0 + PAUSE_PROBE_SECONDS
    assert schedule.hold_seconds("openclaw-weixin", "bot-1", now=12.0) == PAUSE_PROBE_SECONDS - 1.0
    assert schedule.hold_seconds("openclaw-weixin", "bot-2", now=12.0) == 0.0


def test_resume_makes_the_held_entries_due_now() -> None:
    schedule = Schedule()
    schedule.put("held", Slot(0.0, "openclaw-weixin", "bot-1"))
    schedule.pause("openclaw-weixin", "bot-1", now=0.0)
    assert schedule.pop_due(1.0) is None
    assert schedule.resume("openclaw-weixin", "bot-1", now=2.0) is True
    assert schedule.paused_until("openclaw-weixin", "bot-1") == -math.inf
    assert schedule.pop_due(2.0) == "held"
    assert schedule.resume("openclaw-weixin", "bot-1", now=3.0) is False  # not paused any more


def test_a_listing_adds_new_ids_due_at_once_and_names_the_waiting_ones() -> None:
    schedule = Schedule()
    schedule.put("waiting", Slot(50.0, "telegram", None))
    schedule.put("busy", Slot(0.0, "telegram", None))
    assert schedule.pop_due(1.0) == "busy"
    schedule.start("busy")
    listing = schedule.take_listing(["busy", "new", "waiting"], now=1.0)
    assert listing.added is True
    assert listing.waiting == ["waiting"]
    assert schedule.pop_due(1.0) == "new"
    assert schedule.take_listing(["waiting"], now=1.0).added is False


def test_an_attempt_that_ends_still_scheduled_goes_back_on_the_heap() -> None:
    schedule = Schedule()
    schedule.put("x", LISTED)
    assert schedule.pop_due(0.0) == "x"
    schedule.start("x")
    assert schedule.pending_count() == 1
    assert schedule.retime("x", Slot(30.0, "telegram", None)) is True  # the claim: not due yet
    schedule.finish("x")
    assert schedule.pop_due(29.0) is None
    assert schedule.pop_due(30.0) == "x"
    schedule.start("x")
    schedule.drop("x")  # settled
    assert schedule.retime("x", Slot(40.0, "telegram", None)) is False
    schedule.finish("x")
    assert schedule.pending_count() == 0
    assert schedule.next_due() == math.inf


def _entry(attempts: int, created_at: dt.datetime = T0) -> DeliveryEntry:
    return DeliveryEntry(
        "01", "manual", "telegram", "42", None, None, None, Payload("x"), "k", created_at, created_at, attempts=attempts
    )


def test_plan_retry_waits_at_least_the_channels_retry_after() -> None:
    config = DeliveryConfig(initial_backoff_seconds=1.0, max_backoff_seconds=2.0, max_total_retry_seconds=1000.0)
    plan = plan_retry(_entry(0), config, random.Random(1), retry_after=30.0, now=T0)
    assert plan == RetryIn(attempts=1, wait=30.0)


def test_plan_retry_gives_up_at_the_attempt_limit_and_at_the_time_budget() -> None:
    config = DeliveryConfig(max_attempts=3, max_total_retry_seconds=100.0)
    out_of_attempts = plan_retry(_entry(2), config, random.Random(1), None, now=T0)
    assert isinstance(out_of_attempts, GiveUp)
    assert out_of_attempts.attempts == 3
    assert "maxAttempts=3" in out_of_attempts.why
    out_of_time = plan_retry(_entry(0), config, random.Random(1), None, now=T0 + dt.timedelta(seconds=100))
    assert isinstance(out_of_time, GiveUp)
    assert "maxTotalRetrySeconds=100" in out_of_time.why


def test_the_scheduler_itself_uses_no_trio_and_no_clock() -> None:
    """Pure by construction: its own imports name no trio, no time, no I/O module (the address
    rule is passed in; tests/test_layers.py checks what importing it loads)."""
    tree = ast.parse(Path(scheduler.__file__).read_text())
    top = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    top |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert top.isdisjoint({"trio", "anyio", "time", "os", "pathlib", "io", "socket", "asyncio"}), top
