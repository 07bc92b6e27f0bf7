"""Edge cases found in review: races around drains, aborts and session tasks, and failures in
cleanup paths that must never take the gateway down. Each test failed before its fix."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_gateway.app.assemble import queue_delivery
from trio_gateway.errors import BadRequestError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import (
    Notice,
    RecordingDelivery,
    RecordingOutbox,
    build_gateway,
    quick_config,
    recording,
    recording_delivery,
)
from trio_gateway.storage import sessions as sessions_store
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.disk import DiskRunners
from trio_gateway.storage.home import Home

CONSOLE = Origin("console", "ops", None)
NO_STALL = {"gateway.stalledTaskDetection.enabled": False}


async def slow_server(gateway: Gateway, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    await trio.sleep(1)  # an HTTP server still binding while a signal arrives
    task_status.started()
    await trio.sleep_forever()


@pytest.mark.parametrize("kind", ["restart", "stop"])
async def test_drain_requested_during_startup_is_honoured(
    tmp_path: Path, autojump_clock: trio.abc.Clock, kind: str
) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL), servers=[slow_server])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gateway.serve)
        await trio.sleep(0.5)
        request = gateway.request_drain(kind)  # type: ignore[arg-type]
        with trio.fail_after(30):
            await request.done.wait()
        if kind == "restart":
            assert request.new_generation == 2
            assert gateway.state.value == "running"
            gateway.request_drain("stop")
    assert gateway.state.value == "stopped"


async def test_stop_joining_a_finished_restart_still_stops(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    base = recording_delivery([])
    calls = 0

    async def slow_factory(config: Config, gw: Gateway) -> RecordingDelivery:
        nonlocal calls
        calls += 1
        if calls >= 2:
            await trio.sleep(1)  # generation 2 takes a moment to start
        return await base(config, gw)  # type: ignore[return-value]

    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL), delivery_factory=slow_factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        restart = gateway.request_drain("restart")
        await trio.sleep(0.5)  # the restart's drain is over; generation 2 is starting
        assert gateway.request_drain("stop") is restart
        with trio.fail_after(30):
            await gateway.state.wait_value("stopped")


async def test_abort_tells_queued_turns_too_and_nothing_runs_later(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        sid, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="second question")
        await trio.sleep(1)
        assert gateway.abort_session(sid) is True
        await trio.sleep(5)
        assert [n.text for n in notices] == ["Sorry, this request was aborted by the operator."] * 2
        assert gateway.sessions[sid].record.turns == []
        await gateway.request_drain("restart").done.wait()
        await trio.sleep(5)
        gateway.request_drain("stop")
    assert len(notices) == 2  # the queued turn did not run after the restart


async def test_turn_submitted_while_an_abort_unwinds_runs(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        sid, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        await trio.sleep(1)
        gateway.abort_session(sid)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hello again")
        await trio.sleep(5)
        gateway.request_drain("stop")
    assert [n.text for n in notices] == ["Sorry, this request was aborted by the operator.", "echo: hello again"]


async def test_session_task_handover_keeps_the_session_abortable(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A turn submitted exactly as the session's task closes starts a new task; the old task's
    exit must not clear the new one's nursery (which would make the session unabortable)."""
    for k in range(12):
        gateway, _ = build_gateway(tmp_path / f"h{k}", quick_config(**NO_STALL))
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            sid, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hi")
            for _ in range(k):
                await trio.lowlevel.checkpoint()
            await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/slow 1 100")
            await trio.sleep(2)
            session = gateway.sessions[sid]
            assert session.busy
            assert gateway.abort_session(sid) is True
            await trio.sleep(1)
            assert not [u for u in gateway.registry.for_session(sid) if u.kind == "model_call"]
            nursery.cancel_scope.cancel()


async def test_interrupted_turn_of_a_removed_agent_is_dropped_not_fatal(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    two = quick_config(**NO_STALL, **{"agents.helper": {}})
    current = [two]
    home = Home(tmp_path).ensure()
    delivery = queue_delivery(home, EventLog([]), {}, inline)
    gateway, sink = build_gateway(tmp_path, two, load_config=lambda: current[0], delivery_factory=delivery)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        sid, _ = await gateway.submit(agent_id="helper", origin=CONSOLE, prompt="/stall")
        await trio.sleep(1)
        current[0] = quick_config(**NO_STALL)  # the operator removes `helper`
        await gateway.request_drain("restart", force=True).done.wait()
        await trio.sleep(1)
        await gateway.request_drain("restart", force=True).done.wait()
        assert gateway.generation_number == 3
        assert gateway.sessions[sid].record.turns == []
        gateway.request_drain("stop")
    assert any("no longer configured" in str(e.fields.get("why", "")) for e in sink.tagged("RESTART"))


async def test_cron_survives_a_disk_error(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    cron = [{"id": "d", "agent": "main", "everySeconds": 10, "prompt": "hi", "origin": {"channel": "console"}}]
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL, cron=cron))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        gateway.store.root.rmdir()
        gateway.store.root.write_text("not a directory")  # writes under it now fail like EIO
        await trio.sleep(25)
        assert gateway.state.value == "running"
        gateway.request_drain("stop")
    assert len([e for e in sink.tagged("CRON") if e.message == "Cron run failed to start"]) == 2


async def test_a_turn_whose_write_failed_leaves_no_trace(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _sink = build_gateway(tmp_path, quick_config(**NO_STALL))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        session_id, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="first")
        await trio.sleep(5)
        shutil.rmtree(gateway.store.root)
        gateway.store.root.write_text("not a directory")  # the next write fails like EIO
        with pytest.raises(OSError, match="sessions"):
            await gateway.submit(agent_id="main", origin=CONSOLE, prompt="never accepted")
        # Not accepted, so not kept: a later save of this session must not write it.
        assert gateway.sessions[session_id].record.turns == []
        gateway.request_drain("stop")


async def test_a_reloaded_session_never_reuses_a_turn_id(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    # Turn ids are the replies' idempotency keys: a reused one is dropped by Feishu, Discord and
    # WeChat as a repeat of the first reply.
    turn_ids = []
    for _life in range(2):  # two processes on one home
        gateway, _sink = build_gateway(tmp_path, quick_config(**NO_STALL))
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            session_id, turn_id = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hi")
            turn_ids.append(turn_id)
            await trio.sleep(5)
            gateway.request_drain("stop")
    assert session_id in turn_ids[0]
    assert session_id in turn_ids[1]  # the same session, read back
    assert turn_ids[0] != turn_ids[1]


async def test_subagent_notice_that_cannot_be_enqueued_is_logged_not_fatal(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    class DiskFullOutbox(RecordingOutbox):
        async def submit(self, *, kind: Any, **kw: Any) -> Notice:
            if kind.startswith("subagent"):
                raise OSError(28, "No space left on device")
            return await super().submit(kind=kind, **kw)

    async def factory(config: Config, gw: Gateway) -> RecordingDelivery:
        await trio.lowlevel.checkpoint()
        return recording(gw, DiskFullOutbox(config, []))

    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL), delivery_factory=factory)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/spawn main do it")
        await trio.sleep(5)
        assert gateway.state.value == "running"
        gateway.request_drain("stop")
    assert any(e.message == "Notice not enqueued" for e in sink.tagged("DELIVERY"))


async def test_session_ids_never_name_a_path(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        with pytest.raises(BadRequestError, match="sessionId"):
            await gateway.stall_model_call("../gateway", 1)
        gateway.request_drain("stop")
    assert not (tmp_path / "gateway.json").exists()


async def test_forced_restart_does_not_wait_for_a_stuck_session_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real clock: a fsync that hangs must not hold a forced restart. The write is held until
    the test lets it go, so "did not wait" is an observed order, not a wall-clock figure."""
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL))
    gateway.store.runner = DiskRunners.threads().sessions  # production: abandonable threads
    real = sessions_store.atomic_write_bytes
    stuck, release, finished = threading.Event(), threading.Event(), threading.Event()
    calls = 0

    def stuck_on_second(path: Path, data: bytes, **kw: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the turn's "running" save
            stuck.set()
            release.wait(60)
            finished.set()
        real(path, data, **kw)

    monkeypatch.setattr(sessions_store, "atomic_write_bytes", stuck_on_second)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hi")
            assert await trio.to_thread.run_sync(stuck.wait, 60)
            await gateway.request_drain("restart", force=True).done.wait()
            restarted_while_stuck = not finished.is_set()
            gateway.request_drain("stop", force=True)
    finally:
        release.set()
    assert restarted_while_stuck
    assert gateway.generation_number == 2


def test_a_late_session_write_never_overwrites_a_newer_one(tmp_path: Path) -> None:
    store = sessions_store.SessionStore(tmp_path, inline, EventLog([]))
    store._write_if_newer("s-1", 2, b'{"newer": true}')
    store._write_if_newer("s-1", 1, b'{"older": true}')  # finished late (abandoned thread)
    assert (tmp_path / "s-1.json").read_bytes() == b'{"newer": true}'
