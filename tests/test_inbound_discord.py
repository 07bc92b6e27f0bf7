"""The Discord Gateway listener (SPEC 11) against the fake gateway, on the virtual clock."""

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

DC = "discord"


@pytest.fixture
def gateway_config() -> Config:
    return quick_config(
        **{
            "gateway.drain.timeoutSeconds": 10,
            f"channels.{DC}.accounts.guild": fake_account(DC),
            "agents.main.channels": [DC],
        }
    )


async def connected(fakes: FakeChannels) -> None:
    await until(lambda: fakes.discord_gateway.connections_open == 1 and fakes.discord_gateway.identifies >= 1)


async def test_a_discord_message_is_answered_in_its_channel(gateway: Gateway, fake_channels: FakeChannels) -> None:
    await connected(fake_channels)
    fake_channels.push(DC, "hello discord", sender="100000000555000111")
    await until(lambda: fake_channels.delivered(DC))
    [reply] = fake_channels.delivered(DC)
    assert (reply.to, reply.text) == ("channel:100000000555000111", "echo: hello discord")
    [wx] = views.status(gateway)["channels"]
    assert (wx["inbound"]["mode"], wx["inbound"]["state"], wx["inbound"]["messages"]) == ("socket", "listening", 1)


async def test_bots_are_not_heard_and_heartbeats_carry_on(gateway: Gateway, fake_channels: FakeChannels) -> None:
    await connected(fake_channels)
    fake_channels.push(DC, "beep", sender="100000000000000001", bot=True)
    await trio.sleep(200)  # several heartbeat intervals (41.25 s)
    assert fake_channels.delivered(DC) == []
    assert fake_channels.discord_gateway.heartbeats >= 4
    assert fake_channels.discord_gateway.connections_open == 1  # every beat acknowledged


async def test_a_dropped_socket_resumes_and_replays_what_was_missed(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await connected(fake_channels)
    fake_channels.push(DC, "before", sender="100000000000000007")
    await until(lambda: len(fake_channels.delivered(DC)) == 1)
    fake_channels.drop_connection(DC)
    fake_channels.push(DC, "while down", sender="100000000000000007")  # sent to nobody: replayed by the RESUME
    await until(lambda: len(fake_channels.delivered(DC)) == 2, 0.1)
    assert [m.text for m in fake_channels.delivered(DC)] == ["echo: before", "echo: while down"]
    assert (fake_channels.discord_gateway.identifies, fake_channels.discord_gateway.resumes) == (1, 1)
    assert any(e.message.startswith("Reconnecting channel=discord") for e in gateway_log.tagged("CHANNEL"))


async def test_op7_reconnects_and_op9_identifies_afresh(gateway: Gateway, fake_channels: FakeChannels) -> None:
    await connected(fake_channels)
    fake_channels.discord_gateway.reconnect()
    await until(lambda: fake_channels.discord_gateway.resumes == 1, 0.1)
    fake_channels.discord_gateway.invalidate_session()
    await until(lambda: fake_channels.discord_gateway.identifies == 2, 0.1)
    fake_channels.push(DC, "after all that", sender="100000000000000009")
    await until(lambda: fake_channels.delivered(DC), 0.1)


async def test_a_rejected_token_pauses_the_account(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await connected(fake_channels)
    fake_channels.reject_auth(DC)
    await until(lambda: any(e.message.startswith("Paused channel=discord") for e in gateway_log.tagged("CHANNEL")), 0.1)
    await trio.sleep(300)
    assert len([e for e in gateway_log.tagged("CHANNEL") if e.message.startswith("Paused")]) == 1
    fake_channels.accept_auth(DC)
    assert gateway.listeners is not None
    assert gateway.listeners.resume(DC, "guild")
    fake_channels.push(DC, "let in again", sender="100000000000000003")
    await until(lambda: fake_channels.delivered(DC), 0.1)


async def test_the_socket_closes_at_the_start_of_a_drain(gateway: Gateway, fake_channels: FakeChannels) -> None:
    await connected(fake_channels)
    await gateway.submit(agent_id="main", origin=None, prompt="/stall")
    began = trio.current_time()
    done = gateway.request_drain("restart").done
    await until(lambda: fake_channels.discord_gateway.connections_open == 0, 0)
    assert trio.current_time() == began
    await done.wait()
    await until(lambda: fake_channels.discord_gateway.identifies == 2)  # generation 2 identifies again
