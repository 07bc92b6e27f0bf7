"""The event loop's watchdog (issue 25, build item 1): a task step over the threshold is
logged with its task and counted in /metrics; a loop stuck in one step gets every thread's
stack in the log. Time here is the watch's own clock, stepped by the test: never the wall."""

from __future__ import annotations

from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_gateway.http import metrics
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.sim.runtime import build_gateway, quick_config
from trio_gateway.work.loop import LoopWatch


class SteppedClock:
    """The watch's clock, moved only by the test: a step 'takes' what the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watched(threshold: float = 0.1, stuck_after: float = 10.0) -> tuple[LoopWatch, MemorySink, SteppedClock]:
    sink, clock = MemorySink(), SteppedClock()
    watch = LoopWatch(EventLog([sink]), threshold=lambda: threshold, stuck_after=stuck_after, clock=clock)
    return watch, sink, clock


async def test_a_step_over_the_threshold_is_logged_with_its_task_and_counted() -> None:
    watch, sink, clock = watched(threshold=0.1)

    async def reads_a_file_on_the_loop() -> None:
        clock.now += 0.25  # this step "blocked" for 250 ms
        await trio.lowlevel.checkpoint()
        clock.now += 0.05  # and this one for 50 ms: under the threshold

    with watch.installed():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reads_a_file_on_the_loop, name="reads_a_file_on_the_loop")
    [line] = [e.message for e in sink.tagged("LOOP")]
    assert line == "Blocked 250 ms in task reads_a_file_on_the_loop"
    assert watch.blocked.count == 1
    assert watch.blocked.total_seconds == 0.25
    assert dict(watch.blocked.cumulative())[0.1] == 0  # not in the 100 ms bucket
    assert dict(watch.blocked.cumulative())[0.25] == 1


async def test_the_threshold_is_read_at_each_step_so_a_reload_changes_it() -> None:
    sink, clock = MemorySink(), SteppedClock()
    threshold = [1.0]
    watch = LoopWatch(EventLog([sink]), threshold=lambda: threshold[0], clock=clock)

    async def two_slow_steps() -> None:
        clock.now += 0.5  # under 1 s
        await trio.lowlevel.checkpoint()
        threshold[0] = 0.2
        clock.now += 0.5  # over 0.2 s

    with watch.installed():
        await trio.lowlevel.checkpoint()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(two_slow_steps)
    assert watch.blocked.count == 1


async def test_a_stuck_step_logs_every_threads_stack_once() -> None:
    watch, sink, clock = watched(stuck_after=10.0)
    reports: list[bool] = []

    async def stuck_in_one_step() -> None:
        clock.now += 5.0
        reports.append(watch.check_stuck())  # what the detector thread would see: not yet
        clock.now += 6.0
        reports.append(watch.check_stuck())  # 11 s in one step: stuck
        reports.append(watch.check_stuck())  # the same step is reported once

    with watch.installed():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stuck_in_one_step, name="stuck_in_one_step")
    assert reports == [False, True, False]
    lines = [e.message for e in sink.tagged("LOOP")]
    assert lines[0] == "Event loop stuck for 11.0s in task stuck_in_one_step; stacks of every thread follow"
    # faulthandler's dump: this very function is on the Trio thread's stack.
    assert any("stuck_in_one_step" in line and "File" in line for line in lines[1:])
    assert any(line.startswith(("Current thread", "Thread 0x")) for line in lines[1:])


async def test_an_idle_loop_is_not_stuck() -> None:
    """The detector reports a step that runs long, not a loop waiting between steps."""
    watch, sink, clock = watched(stuck_after=10.0)
    task = trio.lowlevel.current_task()
    watch.before_task_step(task)
    clock.now += 0.01
    watch.after_task_step(task)
    clock.now += 60.0  # a minute waiting for I/O
    assert watch.check_stuck() is False
    assert sink.tagged("LOOP") == []


async def test_blocked_steps_are_in_metrics(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config())
    watch, _, _ = watched()
    for seconds in (0.15, 0.4, 3.0):
        watch.blocked.add(seconds)
    gateway.loop_watch = watch
    scraped = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(metrics.render(gateway))
        for s in family.samples
        if s.name.startswith("trio_gateway_event_loop_blocked_seconds")
    }
    assert scraped[("trio_gateway_event_loop_blocked_seconds_count", None)] == 3
    assert scraped[("trio_gateway_event_loop_blocked_seconds_sum", None)] == 3.55
    assert scraped[("trio_gateway_event_loop_blocked_seconds_bucket", "0.25")] == 1
    assert scraped[("trio_gateway_event_loop_blocked_seconds_bucket", "0.5")] == 2
    assert scraped[("trio_gateway_event_loop_blocked_seconds_bucket", "+Inf")] == 3
