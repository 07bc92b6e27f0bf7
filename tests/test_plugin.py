"""The pytest plugin's fixtures, used as a user would: a running gateway on a virtual clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_gateway import __version__
from trio_gateway.errors import GatewayDrainingError
from trio_gateway.http import views
from trio_gateway.log import MemorySink
from trio_gateway.policy.config import Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import DeliveryTap, Harness, HarnessModel, fake_account
from trio_gateway.sim.runtime import quick_config

ME = Origin("console", "me")
SLACK = Origin("slack", "C0123456789")


async def test_a_turn_is_answered_on_the_requesters_channel(
    gateway: Gateway, deliveries: DeliveryTap, gateway_harness: Harness
) -> None:
    sid, _ = await gateway.submit(agent_id="main", origin=ME, prompt="hello")
    await gateway.busy.wait_value(0)
    [reply] = await deliveries.wait_delivered(1, "console")
    assert (reply.to, reply.kind) == ("me", "reply")
    assert views.status(gateway)["sessions"][0]["id"] == sid
    [line] = gateway_harness.messages("console")  # what the console channel wrote to its file
    assert (line.to, line.text) == ("me", "echo: hello")


async def test_runs_on_a_virtual_clock_without_asking_for_one(
    gateway: Gateway, deliveries: DeliveryTap, gateway_log: MemorySink
) -> None:
    start = trio.current_time()
    await gateway.submit(agent_id="main", origin=ME, prompt="/slow 60 3600")  # an hour of streaming
    [reply] = await deliveries.wait_delivered()
    assert reply.at - start == pytest.approx(3600, abs=1)
    assert views.status(gateway)["uptimeSeconds"] >= 3600
    assert not gateway_log.tagged("STALLED SESSION DETECTED")  # it streamed: progress every 60 s


async def test_restart_on_a_stalled_model_keeps_its_bound(
    gateway: Gateway, fake_model: HarnessModel, gateway_log: MemorySink
) -> None:
    fake_model.kill_upstream()  # harmless with nothing in flight
    await gateway.submit(agent_id="main", origin=ME, prompt="/stall")
    start = trio.current_time()
    await gateway.request_drain("restart", timeout=10).done.wait()
    assert trio.current_time() - start == pytest.approx(10.0, abs=0.01)
    assert gateway.generation_number == 2
    messages = [e.message for e in gateway_log.tagged("DRAINING")]
    assert "Draining timeout exceeded (10000ms); forcing task abort" in messages


async def test_failing_channel_retries_through_the_real_adapter(
    gateway: Gateway, fake_channels: FakeChannels, deliveries: DeliveryTap
) -> None:
    fake_channels.fail("slack", times=2)
    await gateway.submit(agent_id="main", origin=SLACK, prompt="hi")
    await deliveries.wait_delivered(1, "slack")  # the backoff passes in virtual time
    assert [(a.outcome, a.reason) for a in deliveries.attempts] == [("retry", "HTTP 503")] * 2 + [("ok", "")]
    assert len(fake_channels.requests_to("slack")) == 3
    [message] = fake_channels.delivered("slack")
    assert (message.to, message.text) == ("C0123456789", "echo: hi")


async def test_a_rejection_is_classified_per_channel_and_dead_lettered(
    gateway: Gateway, fake_channels: FakeChannels, gateway_harness: Harness
) -> None:
    fake_channels.reject("feishu")  # the platform's "invalid ids": HTTP 400, code 99992360
    await gateway.submit(agent_id="main", origin=Origin("feishu", "ou_nobody"), prompt="hi")
    await gateway.busy.wait_value(0)
    await trio.sleep(1)
    [dead] = await gateway_harness.dead_letters()
    assert dead.failed_reason == "HTTP 400 feishu_code 99992360 Invalid ids"
    assert [r.op for r in fake_channels.requests if r.channel == "feishu"] == ["token", "send"]


@pytest.fixture
def gateway_config() -> Config:
    # Accounts need only the keys their adapter requires; the harness makes up the secrets.
    accounts = {f"channels.{c}.accounts.default": fake_account(c) for c in ("slack", "feishu")}
    return quick_config(**{"gateway.drain.timeoutSeconds": 5, **accounts})


async def test_gateway_config_can_be_overridden(gateway: Gateway) -> None:
    await gateway.submit(agent_id="main", origin=ME, prompt="/stall")
    gateway.request_drain("stop")
    await gateway.state.wait_value("draining")
    with pytest.raises(GatewayDrainingError):
        await gateway.submit(agent_id="main", origin=ME, prompt="late")
    await gateway.state.wait_value("stopped")
    assert gateway.drains[0].timeout_seconds == 5


async def test_metrics_count_deliveries_by_outcome_across_restarts(gateway: Gateway, deliveries: DeliveryTap) -> None:
    """SPEC 5: /metrics shows deliveries by outcome. The tally is the process's, not one
    generation's: a restart does not reset the counter."""
    from trio_gateway.http import metrics

    await gateway.submit(agent_id="main", origin=ME, prompt="before")
    await deliveries.wait_delivered(1, "console")
    await trio.testing.wait_all_tasks_blocked()
    await gateway.request_drain("restart").done.wait()
    await gateway.submit(agent_id="main", origin=ME, prompt="after")
    await deliveries.wait_delivered(2, "console")
    await trio.testing.wait_all_tasks_blocked()  # the send is recorded; let its attempt settle
    lines = metrics.render(gateway).splitlines()
    # prometheus-client writes every value as a float.
    assert 'trio_gateway_deliveries_total{channel="console",outcome="ok"} 2.0' in lines
    assert f'trio_gateway_build_info{{version="{__version__}"}} 1.0' in lines
    assert views.status(gateway)["version"] == __version__
