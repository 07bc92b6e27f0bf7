"""Fault injection (issue 9): with any one subsystem hanging, a restart keeps its bound; with a
disk full, nothing accepted is lost once space returns, and new work gets 507 meanwhile.

Faults are the kit's (`testing.faults`), passed at construction; everything on a MockClock.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio
from test_http_api import SESSION, TOKEN, Driver

from trio_gateway.errors import GatewayError, InsufficientStorageError
from trio_gateway.http import views
from trio_gateway.http.app import GatewayApp
from trio_gateway.log import Event, EventLog, FileSink
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.faults import SUBSYSTEMS, Faults
from trio_gateway.sim.harness import Harness
from trio_gateway.sim.runtime import quick_config

T, C = 5.0, 2.0
CONSOLE = Origin("console", "ops", None)
CONFIG = quick_config(
    **{
        "gateway.drain.timeoutSeconds": T,
        "gateway.drain.cleanupTimeoutSeconds": C,
        "gateway.stalledTaskDetection.enabled": False,
        "delivery.initialBackoffSeconds": 0.5,
        "delivery.maxBackoffSeconds": 2,
    }
)


async def _submit_quietly(harness: Harness, prompt: str, accepted: list[str]) -> None:
    try:
        _, turn_id = await harness.gateway.submit(agent_id="main", origin=CONSOLE, prompt=prompt)
    except GatewayError:
        return  # refused (507, draining): not accepted, so nothing is owed
    accepted.append(turn_id)


async def _all_replied(harness: Harness, accepted: list[str]) -> None:
    # Polls a file (the console channel's), which has no event to wait on; virtual seconds.
    while not set(accepted) <= {m.key for m in harness.console_messages()}:  # noqa: ASYNC110
        await trio.sleep(1)


def _keys(harness: Harness) -> list[str | None]:
    return [m.key for m in harness.console_messages()]


@pytest.mark.parametrize("force", [False, True], ids=["drained", "forced"])
@pytest.mark.parametrize("subsystem", SUBSYSTEMS)
async def test_a_hung_subsystem_cannot_hold_a_restart(
    tmp_path: Path, autojump_clock: trio.abc.Clock, subsystem: str, force: bool
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(**{subsystem: "hang"}))
    gateway = harness.gateway
    accepted: list[str] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await _submit_quietly(harness, "before", accepted)
        await harness.wait_delivered(1)
        harness.faults.arm()
        for i in range(3):  # work in flight in the hung subsystem when the restart comes
            nursery.start_soon(_submit_quietly, harness, f"during {i}", accepted)
        await trio.sleep(1)
        started = trio.current_time()
        request = gateway.request_drain("restart", force=force)
        with trio.fail_after(600):  # before the fix: never (a deadline-free shield)
            await request.done.wait()
        took = trio.current_time() - started
        assert request.new_generation == 2
        assert took <= (0 if force else T) + C + 0.1
        harness.faults.clear()  # the disk answers again: everything accepted is delivered
        with trio.fail_after(600):
            await _all_replied(harness, accepted)
        gateway.request_drain("stop", force=True)
    assert len(_keys(harness)) == len(set(_keys(harness)))  # and each once


@pytest.mark.parametrize("subsystem", ["queue_disk", "sessions_disk", "console_file", "log_file"])
async def test_nothing_accepted_is_lost_to_a_full_disk(
    tmp_path: Path, autojump_clock: trio.abc.Clock, subsystem: str, capfd: pytest.CaptureFixture[str]
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(**{subsystem: "enospc"}))
    gateway = harness.gateway
    accepted: list[str] = []
    refused: list[InsufficientStorageError] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await _submit_quietly(harness, "before", accepted)
        harness.faults.arm()
        for i in range(4):
            try:
                _, turn_id = await gateway.submit(agent_id="main", origin=CONSOLE, prompt=f"full {i}")
                accepted.append(turn_id)
            except InsufficientStorageError as exc:
                refused.append(exc)
            await trio.sleep(2)
        assert gateway.state.value == "running"  # the gateway stays up
        if subsystem == "queue_disk":
            assert "queue" in views.status(gateway)["storage"]["full"]  # what status shows meanwhile
        if subsystem in ("queue_disk", "sessions_disk"):
            assert refused  # new work is refused with 507 while the disk is full ...
            assert refused[0].http_status == 507
            assert subsystem.split("_")[0] in str(refused[0])
        else:
            assert refused == []  # ... and only when it is the work's own disk
        harness.faults.clear()  # space returns
        with trio.fail_after(600):
            await _all_replied(harness, accepted)
        await _submit_quietly(harness, "after", accepted)  # and new work is taken again
        with trio.fail_after(600):
            await _all_replied(harness, accepted)
        gateway.request_drain("stop")
    assert len(_keys(harness)) == len(set(_keys(harness)))
    assert await harness.dead_letters() == []
    assert views.status(gateway)["storage"]["full"] == {}  # recovered
    if subsystem == "log_file":
        assert views.status(gateway)["storage"]["logWriteFailures"] > 0
        assert capfd.readouterr().err.count("later failures are counted") == 1  # reported once


async def test_a_reply_kept_for_a_full_disk_is_delivered_not_rerun_after_a_restart(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(queue_disk="enospc"))
    gateway = harness.gateway
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        harness.faults.arm()
        _, turn_id = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="keep me")
        await trio.sleep(3)
        calls = harness.model.calls
        await gateway.request_drain("restart").done.wait()  # cuts the turn while it retries
        harness.faults.clear()
        with trio.fail_after(600):
            await _all_replied(harness, [turn_id])
        assert harness.model.calls == calls  # the kept reply was delivered, the model not asked again
        gateway.request_drain("stop")
    [message] = harness.console_messages()
    assert message.text == "echo: keep me"


async def test_a_full_sessions_disk_is_507_over_http_and_the_next_request_is_served(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(sessions_disk="enospc"))
    call = Driver(GatewayApp(harness.gateway, TOKEN, {}, wall_time=lambda: 1_800_000_000.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        harness.faults.arm()
        refused = await call("POST", "/v1/sessions", SESSION)
        assert (refused.status, refused.json["error"]) == (507, "InsufficientStorageError")
        assert "sessions disk is full" in refused.json["message"]
        assert all(s.record.turns == [] for s in harness.gateway.sessions.values())  # nothing half-kept
        harness.faults.clear()
        accepted = await call("POST", "/v1/sessions", SESSION)
        assert accepted.status == 202
        harness.gateway.request_drain("stop")


def test_logging_never_raises_counts_failures_and_reports_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    class FullStderr:
        def write(self, event: Event) -> None:
            raise OSError(28, "No space left on device")

    fifo = tmp_path / "gateway.log"
    os.mkfifo(fifo)  # a log file nobody reads: opening it for writing would block forever
    file_sink = FileSink(fifo)
    log = EventLog([FullStderr(), file_sink])
    for i in range(3):
        log.error("TEST", f"inside error handling {i}")  # must not raise, must not block
    file_sink.close()
    assert log.failed_writes == 6
    err = capfd.readouterr().err
    assert err.count("a log sink failed") == 1
    assert err.count(f"cannot write {fifo}") == 1  # ENXIO: no reader; never a blocked open
