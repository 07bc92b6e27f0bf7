"""The runtime core on trio's MockClock: drain deadline, stall recovery, restart by generation."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio

from trio_gateway.errors import GatewayDrainingError
from trio_gateway.http import views
from trio_gateway.log import MemorySink
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import Notice, build_gateway, quick_config

WEIXIN = Origin("openclaw-weixin", "o9cq80abc@im.wechat", "2005b227a854-im-bot")
CONSOLE = Origin("console", "ops", None)

NO_STALL = {"gateway.stalledTaskDetection.enabled": False}


async def start(nursery: trio.Nursery, gateway: Gateway) -> None:
    await nursery.start(gateway.serve)


async def wait_generation(gateway: Gateway, n: int) -> None:
    await gateway.state.wait_value(lambda s: s == "running" and gateway.generation_number >= n)


def tags(sink: MemorySink) -> list[str]:
    return [f"[{e.tag}] {e.message}" for e in sink.events]


async def test_seed_incident_restart_completes_at_the_deadline(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """One model call whose upstream never answers; restart with a 60 s drain: generation 2
    accepts work 60 s after the request (cleanup is instant here), not a second later."""
    config = quick_config(**NO_STALL, **{"gateway.drain.timeoutSeconds": 60})
    gateway, sink = build_gateway(tmp_path, config)
    wall = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        await trio.sleep(5)
        requested = trio.current_time()
        request = gateway.request_drain("restart")
        await request.done.wait()
        restarted_after = trio.current_time() - requested
        assert gateway.generation_number == 2
        gateway.request_drain("stop", force=True)
    wall = time.perf_counter() - wall
    print(f"\nseed restart: {restarted_after:.3f} virtual s after request (timeout 60 s); wall {wall * 1000:.0f} ms")
    assert restarted_after == pytest.approx(60.0, abs=0.01)
    lines = tags(sink)
    assert "[DRAINING] Starting graceful drain of 1 task(s), timeout=60000ms" in lines
    assert sum("still draining 1 active task(s) and 0 active embedded run(s)" in ln for ln in lines) == 11
    assert "[DRAINING] Draining timeout exceeded (60000ms); forcing task abort" in lines
    assert any(ln.startswith("[SHUTDOWN] Shutdown completed cleanly in 60000ms") for ln in lines)
    assert "[RESTART] generation=2 accepting work" in lines
    report = gateway.drains[0]
    assert report.timed_out
    assert report.aborted_tasks == 1
    assert report.aborted_work == ("model_call session=s-1-1",)


@pytest.mark.parametrize("n", [1, 1000])
async def test_restart_bound_holds_for_many_stalled_calls(
    tmp_path: Path, autojump_clock: trio.abc.Clock, n: int
) -> None:
    config = quick_config(**NO_STALL, **{"gateway.drain.timeoutSeconds": 60})
    gateway, _ = build_gateway(tmp_path, config)
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        for i in range(n):
            await gateway.submit(agent_id="main", origin=Origin("console", f"user-{i}"), prompt="/stall")
        assert gateway.busy.value == n
        requested = trio.current_time()
        await gateway.request_drain("restart").done.wait()
        took = trio.current_time() - requested
        await trio.sleep(1)  # let generation 2 resume what was cut off
        # Every cut-off turn was accepted work: generation 2 runs each once more (SPEC 6).
        assert gateway.busy.value == n
        assert all(t.resumes == 1 for s in gateway.sessions.values() for t in s.record.turns)
        gateway.request_drain("stop", force=True)
    assert took == pytest.approx(60.0, abs=0.01)
    assert gateway.drains[0].aborted_tasks == n


async def test_idle_gateway_restarts_at_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, sink = build_gateway(tmp_path, quick_config())
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        requested = trio.current_time()
        await gateway.request_drain("restart").done.wait()
        assert trio.current_time() - requested == pytest.approx(0.0, abs=0.001)
        gateway.request_drain("stop")
    assert "[DRAINING] All tasks cleared; proceeding with shutdown" in tags(sink)


async def test_work_that_finishes_in_time_is_not_aborted(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    config = quick_config(**{"gateway.drain.timeoutSeconds": 60})
    gateway, sink = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/slow 5 30")
        requested = trio.current_time()
        await gateway.request_drain("restart").done.wait()
        assert trio.current_time() - requested == pytest.approx(30.0, abs=0.01)
        gateway.request_drain("stop")
    assert not gateway.drains[0].timed_out
    assert [n.text for n in notices] == ["slow done: /slow 5 30"]
    assert "[DRAINING] Draining timeout exceeded (60000ms); forcing task abort" not in tags(sink)


async def test_force_restart_is_immediate(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL))
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        for _ in range(10):
            await gateway.submit(agent_id="main", origin=Origin("console", f"u{_}"), prompt="/stall")
        requested = trio.current_time()
        await gateway.request_drain("restart", force=True).done.wait()
        assert trio.current_time() - requested == pytest.approx(0.0, abs=0.001)
        gateway.request_drain("stop", force=True)
    assert "[DRAINING] Forced drain; aborting 10 task(s) now" in tags(sink)


async def test_concurrent_restart_requests_share_one_drain(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL, **{"gateway.drain.timeoutSeconds": 60}))
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        first = gateway.request_drain("restart")
        await trio.sleep(10)
        second = gateway.request_drain("restart")
        third = gateway.request_drain("restart", timeout=100)  # may not lengthen the drain
        assert first is second is third
        await first.done.wait()
        assert gateway.generation_number == 2
        gateway.request_drain("stop", force=True)
    assert len(gateway.drains) == 2  # the restart, then the final stop
    assert sum(ln.startswith("[DRAINING] Starting graceful drain") for ln in tags(sink)) == 2
    assert gateway.drains[0].waited_seconds == pytest.approx(60.0, abs=0.01)


async def test_force_joining_a_graceful_drain_cuts_it_short(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL, **{"gateway.drain.timeoutSeconds": 60}))
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        start_at = trio.current_time()
        request = gateway.request_drain("restart")
        await trio.sleep(7)
        gateway.request_drain("restart", force=True)
        await request.done.wait()
        assert trio.current_time() - start_at == pytest.approx(7.0, abs=0.01)
        gateway.request_drain("stop", force=True)


async def test_intake_refused_while_draining(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL))
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        gateway.request_drain("restart")
        await trio.sleep(1)
        assert views.status(gateway)["state"] == "draining"
        with pytest.raises(GatewayDrainingError):
            await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hello")
        gateway.request_drain("stop", force=True)


async def test_stall_detected_within_one_check_interval_and_session_stays_usable(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    config = quick_config(**{"gateway.stalledTaskDetection.thresholdSeconds": 120})
    gateway, sink = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        t0 = trio.current_time()
        session_id, _ = await gateway.submit(agent_id="main", origin=WEIXIN, prompt="/stall")
        await gateway.busy.wait_value(0)
        aborted_after = trio.current_time() - t0
        await gateway.submit(agent_id="main", origin=WEIXIN, prompt="hello again")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    assert 120 <= aborted_after <= 121
    detected = sink.tagged("STALLED SESSION DETECTED")
    assert len(detected) == 1
    fields = detected[0].fields
    assert fields["classification"] == "stalled_agent_run"
    assert fields["activeWorkKind"] == "model_call"
    assert fields["lastProgress"] == "model_call:started"
    assert fields["recovery"] == "abort"
    assert fields["sessionId"] == session_id
    # The session is a field of its own (a key in JSON lines); the text line reads as SPEC 8's.
    assert (
        sink.tagged("AUTO-ABORT")[0]
        .text()
        .endswith(f"[AUTO-ABORT] Aborting stalled model_call in session={session_id}")
    )
    assert (
        sink.tagged("ABORT COMPLETE")[0]
        .text()
        .endswith(f"[ABORT COMPLETE] model_call terminated after 120s session={session_id}")
    )
    # The requester hears a clear failure on its own channel, and the next turn works.
    assert [(n.channel, n.to) for n in notices] == [(WEIXIN.channel, WEIXIN.to)] * 2
    assert notices[0].text.startswith("Sorry, this request failed: model_call aborted: no progress for 120s")
    assert notices[1].text == "echo: hello again"


async def test_recovery_none_logs_but_does_not_abort(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = quick_config(
        **{
            "gateway.stalledTaskDetection.thresholdSeconds": 10,
            "gateway.stalledTaskDetection.recovery.model_call": "none",
        }
    )
    gateway, sink = build_gateway(tmp_path, config)
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        await trio.sleep(100)
        assert gateway.busy.value == 1
        assert views.status(gateway)["stalled"] == ["s-1-1"]
        gateway.request_drain("stop", force=True)
    assert sink.tagged("STALLED SESSION DETECTED")[0].fields["recovery"] == "none"
    assert not sink.tagged("AUTO-ABORT")


async def test_call_that_makes_progress_is_never_aborted(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    config = quick_config(**{"gateway.stalledTaskDetection.thresholdSeconds": 120})
    gateway, sink = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await start(nursery, gateway)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/slow 119 5000")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    assert not sink.tagged("STALLED SESSION DETECTED")
    assert notices[0].text.startswith("slow done")
