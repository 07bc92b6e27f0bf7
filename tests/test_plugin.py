"""The pytest plugin's fixtures, used as a user would: a running gateway on a virtual clock."""

from __future__ import annotations

import pytest
import trio

from trio_gateway.config import Config
from trio_gateway.errors import GatewayDrainingError
from trio_gateway.gateway import Gateway
from trio_gateway.log import MemorySink
from trio_gateway.routing import Origin
from trio_gateway.scenario import FakeChannels, ScenarioModel
from trio_gateway.testing.runtime import quick_config

ME = Origin("console", "me")


async def test_a_turn_is_answered_on_the_requesters_channel(gateway: Gateway, fake_channels: FakeChannels) -> None:
    sid, _ = await gateway.submit(agent_id="main", origin=ME, prompt="hello")
    await gateway.busy.wait_value(0)
    [reply] = await fake_channels.wait_delivered(1, "console")
    assert (reply.to, reply.kind) == ("me", "reply")
    assert gateway.status()["sessions"][0]["id"] == sid


async def test_runs_on_a_virtual_clock_without_asking_for_one(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    start = trio.current_time()
    await gateway.submit(agent_id="main", origin=ME, prompt="/slow 60 3600")  # an hour of streaming
    [reply] = await fake_channels.wait_delivered()
    assert reply.at - start == pytest.approx(3600, abs=1)
    assert gateway.status()["uptimeSeconds"] >= 3600
    assert not gateway_log.tagged("STALLED SESSION DETECTED")  # it streamed: progress every 60 s


async def test_restart_on_a_stalled_model_keeps_its_bound(
    gateway: Gateway, fake_model: ScenarioModel, gateway_log: MemorySink
) -> None:
    fake_model.kill_upstream()  # harmless with nothing in flight
    await gateway.submit(agent_id="main", origin=ME, prompt="/stall")
    start = trio.current_time()
    await gateway.request_drain("restart", timeout=10).done.wait()
    assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
    assert gateway.generation_number == 2
    messages = [e.message for e in gateway_log.tagged("DRAINING")]
    assert "Draining timeout exceeded (10000ms); forcing task abort" in messages


async def test_failing_channel_retries_and_the_test_can_change_it(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    fake_channels.configure("console", mode="fail", failTimes=2)
    await gateway.submit(agent_id="main", origin=ME, prompt="hi")
    await fake_channels.wait_delivered()  # the backoff passes in virtual time
    outcomes = [r.outcome for r in fake_channels.requests]
    assert outcomes == ["retry", "retry", "ok"]


@pytest.fixture
def gateway_config() -> Config:
    return quick_config(**{"gateway.drain.timeoutSeconds": 5})


async def test_gateway_config_can_be_overridden(gateway: Gateway) -> None:
    await gateway.submit(agent_id="main", origin=ME, prompt="/stall")
    gateway.request_drain("stop")
    await gateway.state.wait_value("draining")
    with pytest.raises(GatewayDrainingError):
        await gateway.submit(agent_id="main", origin=ME, prompt="late")
    await gateway.state.wait_value("stopped")
    assert gateway.drains[0].timeout_seconds == 5
