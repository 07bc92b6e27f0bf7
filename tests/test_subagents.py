"""Subagents, cron and interrupted turns on MockClock: the origin travels with the work."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_gateway.http import views
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.runtime import Notice, build_gateway, quick_config

WEIXIN = Origin("openclaw-weixin", "o9cq80abc@im.wechat", "2005b227a854-im-bot")

# The seed's agent: bound to Feishu first, WeChat second.
SEED_AGENT = {
    "channels": {
        "feishu": {"accounts": {"2005b227a854-im-bot": {"baseUrl": "http://127.0.0.1:9", "appId": "cli_x"}}},
        "openclaw-weixin": {"accounts": {"2005b227a854-im-bot": {"baseUrl": "http://127.0.0.1:9"}}},
    },
    "agents": {"main": {"accountId": "2005b227a854-im-bot", "channels": ["feishu", "openclaw-weixin"]}},
}


def seed_config(**overrides: object) -> object:
    return quick_config(**{f"{k}": v for k, v in SEED_AGENT.items()}, **overrides)


async def test_subagent_notice_goes_to_the_requester_not_the_first_bound_channel(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, seed_config(), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=WEIXIN, prompt="/spawn main summarise the day")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    kinds = sorted((n.kind, n.channel, n.to) for n in notices)
    assert kinds == [
        ("reply", "openclaw-weixin", WEIXIN.to),
        ("subagent_completion", "openclaw-weixin", WEIXIN.to),
    ]
    assert all(n.origin == WEIXIN for n in notices)
    assert not [n for n in notices if n.channel == "feishu"]


async def test_nested_subagents_inherit_the_origin_to_depth_three(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, seed_config(), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        # Each level's task is itself a spawn request, three deep; the fourth level may not spawn.
        prompt = "/spawn main /spawn main /spawn main /spawn main leaf"
        await gateway.submit(agent_id="main", origin=WEIXIN, prompt=prompt)
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    completions = [n for n in notices if n.kind == "subagent_completion"]
    assert len(completions) == 3  # depth limit 3: the innermost answers instead of spawning
    assert all((n.channel, n.to, n.origin) == ("openclaw-weixin", WEIXIN.to, WEIXIN) for n in notices)


async def test_subagent_cut_by_drain_still_sends_one_failure_notice(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    config = seed_config(**{"gateway.stalledTaskDetection.enabled": False, "gateway.drain.timeoutSeconds": 10})
    gateway, _ = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=WEIXIN, prompt="/spawn main /stall")
        await trio.sleep(1)
        assert views.status(gateway)["sessions"][0]["subagents"][0]["state"] == "running"
        await gateway.request_drain("restart").done.wait()
        gateway.request_drain("stop", force=True)
    failures = [n for n in notices if n.kind == "subagent_failure"]
    assert len(failures) == 1
    assert (failures[0].channel, failures[0].to) == ("openclaw-weixin", WEIXIN.to)
    assert "cancelled" in failures[0].text
    assert failures[0].at == pytest.approx(11.0, abs=0.01)


async def test_stalled_subagent_model_call_is_aborted_and_reported(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    config = seed_config(**{"gateway.stalledTaskDetection.thresholdSeconds": 30})
    gateway, sink = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=WEIXIN, prompt="/spawn main /stall")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    failure = next(n for n in notices if n.kind == "subagent_failure")
    assert "model_call aborted: no progress for 30s" in failure.text
    assert failure.channel == "openclaw-weixin"
    # The subagent's container unit was never itself judged stalled: only the model call.
    assert [e.fields["activeWorkKind"] for e in sink.tagged("STALLED SESSION DETECTED")] == ["model_call"]


async def test_turn_without_origin_falls_back_to_first_bound_channel(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, quick_config(), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=None, prompt="internal")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    assert [(n.channel, n.text) for n in notices] == [("console", "echo: internal")]


async def test_cron_runs_on_schedule_with_its_origin(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    cron = [
        {
            "id": "digest",
            "agent": "main",
            "everySeconds": 3600,
            "prompt": "/spawn main digest",
            "origin": {"channel": "openclaw-weixin", "to": WEIXIN.to, "accountId": WEIXIN.account_id},
        }
    ]
    gateway, _ = build_gateway(tmp_path, seed_config(cron=cron), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await trio.sleep(3 * 3600 + 10)
        gateway.request_drain("stop")
    results = [n for n in notices if n.kind == "cron_result"]
    completions = [n for n in notices if n.kind == "subagent_completion"]
    assert [round(n.at) for n in results] == [3600, 7200, 10800]
    assert len(completions) == 3
    assert {(n.channel, n.to) for n in notices} == {("openclaw-weixin", WEIXIN.to)}


async def test_interrupted_turn_runs_again_after_restart(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    config = quick_config(**{"gateway.stalledTaskDetection.enabled": False, "gateway.drain.timeoutSeconds": 5})
    gateway, sink = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.submit(agent_id="main", origin=Origin("console", "u1"), prompt="/slow 1 20")
        await trio.sleep(2)
        await gateway.request_drain("restart").done.wait()  # cut at 7 s, resumed in generation 2
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    assert [n.text for n in notices] == ["slow done: /slow 1 20"]
    assert any(e.message == "Resuming interrupted turn" for e in sink.tagged("RESTART"))


async def test_turns_left_on_disk_by_a_crash_resume_at_next_start(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    config = quick_config(**{"gateway.stalledTaskDetection.enabled": False})
    first, _ = build_gateway(tmp_path, config)
    with trio.CancelScope() as crash:
        async with trio.open_nursery() as nursery:
            await nursery.start(first.serve)
            await first.submit(agent_id="main", origin=Origin("console", "u1"), prompt="remember me")
            # A crash: the whole process vanishes without any drain or cleanup.
            crash.cancel()
    # The turn was accepted (written) before submit returned; a new process finds it.
    notices: list[Notice] = []
    second, _ = build_gateway(tmp_path, config, notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(second.serve)
        await second.busy.wait_value(0)
        second.request_drain("stop")
    assert [n.text for n in notices] == ["echo: remember me"]
    # A new session in the new process gets a fresh id, never one of the stored sessions'.
    assert len(second.sessions) == 1
    async with trio.open_nursery() as nursery:
        third, _ = build_gateway(tmp_path, config, notices=notices)
        await nursery.start(third.serve)
        sid, _ = await third.submit(agent_id="main", origin=Origin("console", "u2"), prompt="new")
        assert sid not in second.sessions
        assert len(third.sessions) == 2
        third.request_drain("stop")


async def test_session_abort_cancels_its_work_and_tells_the_requester(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, _ = build_gateway(
        tmp_path, quick_config(**{"gateway.stalledTaskDetection.enabled": False}), notices=notices
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        session_id, _ = await gateway.submit(agent_id="main", origin=Origin("console", "u1"), prompt="/stall")
        await trio.sleep(3)
        assert gateway.abort_session(session_id) is True
        await gateway.busy.wait_value(0)
        await gateway.submit(agent_id="main", origin=Origin("console", "u1"), prompt="still here?")
        await gateway.busy.wait_value(0)
        gateway.request_drain("stop")
    assert [n.text for n in notices] == ["Sorry, this request was aborted by the operator.", "echo: still here?"]
    assert gateway.sessions[session_id].record.turns == []
