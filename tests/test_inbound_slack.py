"""Slack Socket Mode (SPEC 11) against the fake, on the virtual clock."""

from __future__ import annotations

import pytest
import trio
from test_inbound import until

from trio_gateway.http import views
from trio_gateway.log import MemorySink
from trio_gateway.policy.config import Config
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import fake_account
from trio_gateway.sim.runtime import quick_config


@pytest.fixture
def gateway_config() -> Config:
    account = {**fake_account("slack"), "appTokenEnv": "FAKE_SLACK_APP_TOKEN"}
    return quick_config(**{"channels.slack.accounts.T1": account, "agents.main.channels": ["slack"]})


async def test_an_envelope_is_answered_and_acked_after_its_turn(gateway: Gateway, fake_channels: FakeChannels) -> None:
    socket = fake_channels.slack_socket
    await until(lambda: socket.connections_open == 1)
    fake_channels.push("slack", "hi slack", sender="C0123456789")
    await until(lambda: fake_channels.delivered("slack"))
    [reply] = fake_channels.delivered("slack")
    assert (reply.to, reply.text) == ("C0123456789", "echo: hi slack")
    assert socket.unacked() == []
    [account] = views.status(gateway)["channels"]
    assert (account["inbound"]["mode"], account["inbound"]["messages"]) == ("socket", 1)


async def test_an_unacked_envelope_is_redelivered_and_not_answered_twice(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    socket = fake_channels.slack_socket
    await until(lambda: socket.connections_open == 1)
    fake_channels.push("slack", "once only", sender="C0123456789")
    await until(lambda: fake_channels.delivered("slack"))
    socket.acked.clear()  # as if the ack was lost with the connection
    fake_channels.drop_connection("slack")
    await until(lambda: socket.connections == 2 and not socket.unacked(), 0.1)  # redelivered, acked again
    await trio.sleep(30)
    assert [m.text for m in fake_channels.delivered("slack")] == ["echo: once only"]


async def test_bots_are_ignored_and_disconnect_envelopes_reconnect(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    socket = fake_channels.slack_socket
    await until(lambda: socket.connections_open == 1)
    fake_channels.push("slack", "from a bot", sender="C0123456789", bot=True)
    socket.disconnect("refresh_requested")
    await until(lambda: socket.connections == 2, 0.1)
    fake_channels.push("slack", "after refresh", sender="C0123456789")
    await until(lambda: fake_channels.delivered("slack"), 0.1)
    assert [m.text for m in fake_channels.delivered("slack")] == ["echo: after refresh"]
    assert socket.unacked() == []  # the bot's envelope was acknowledged too, just not answered
    assert any("refresh_requested" in str(e.fields) for e in gateway_log.tagged("CHANNEL"))


async def test_invalid_auth_pauses_the_account(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await until(lambda: fake_channels.slack_socket.connections_open == 1)
    fake_channels.reject_auth("slack")
    await until(lambda: any(e.message.startswith("Paused channel=slack") for e in gateway_log.tagged("CHANNEL")), 0.1)
    assert "invalid_auth" in views.status(gateway)["channels"][0]["inbound"]["pausedReason"]
