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
    """op 7: the socket is closed with 4000, not 1000 (which ends the session, Discord's docs:
    https://discord.com/developers/docs/topics/gateway#closing-connections), so the RESUME
    that follows is accepted; op 9 d=false: IDENTIFY."""
    dc = fake_channels.discord_gateway
    await connected(fake_channels)
    dc.reconnect()
    await until(lambda: dc.resumes == 1 and dc.connections_open == 1, 0.1)
    assert (dc.client_close_codes, dc.refused_resumes, dc.identifies) == ([4000], 0, 1)
    dc.invalidate_session()
    await until(lambda: dc.identifies == 2, 0.1)
    fake_channels.push(DC, "after all that", sender="100000000000000009")
    await until(lambda: fake_channels.delivered(DC), 0.1)
    assert dc.refused_resumes == 0


async def test_a_zombie_connection_is_closed_to_resume(gateway: Gateway, fake_channels: FakeChannels) -> None:
    """No heartbeat ACK: Discord asks for a close with a non-1000 code and a RESUME."""
    dc = fake_channels.discord_gateway
    await connected(fake_channels)
    dc.ack_heartbeats = False
    await until(lambda: dc.client_close_codes != [], 0.1)
    dc.ack_heartbeats = True
    await until(lambda: dc.resumes == 1 and dc.connections_open == 1, 0.1)
    assert (dc.client_close_codes, dc.refused_resumes, dc.identifies) == ([4000], 0, 1)


@pytest.mark.parametrize("code", [4004, 4014])
async def test_a_refused_connection_pauses_the_account_and_resume_identifies_afresh(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink, code: int
) -> None:
    """4004 (bad token) and 4014 (disallowed intents) end the session: after `channels resume`
    the listener sends IDENTIFY, not a RESUME Discord would refuse (discord.py: a fatal close
    raises; a new connection starts a new session)."""
    await connected(fake_channels)
    fake_channels.discord_gateway.reject_code = code
    fake_channels.reject_auth(DC)
    await until(lambda: any(e.message.startswith("Paused channel=discord") for e in gateway_log.tagged("CHANNEL")), 0.1)
    await trio.sleep(300)
    assert len([e for e in gateway_log.tagged("CHANNEL") if e.message.startswith("Paused")]) == 1
    fake_channels.accept_auth(DC)
    assert gateway.listeners is not None
    assert gateway.listeners.resume(DC, "guild")
    await until(lambda: fake_channels.discord_gateway.identifies == 2, 0.1)
    fake_channels.push(DC, "let in again", sender="100000000000000003")
    await until(lambda: fake_channels.delivered(DC), 0.1)
    assert (fake_channels.discord_gateway.resumes, fake_channels.discord_gateway.refused_resumes) == (0, 0)


async def test_the_socket_closes_at_the_start_of_a_drain(gateway: Gateway, fake_channels: FakeChannels) -> None:
    await connected(fake_channels)
    await gateway.submit(agent_id="main", origin=None, prompt="/stall")
    began = trio.current_time()
    done = gateway.request_drain("restart").done
    await until(lambda: fake_channels.discord_gateway.connections_open == 0, 0)
    assert trio.current_time() == began
    await done.wait()
    await until(lambda: fake_channels.discord_gateway.identifies == 2)  # generation 2 identifies again


async def test_discord_shows_listening_only_after_its_handshake_is_answered(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    """The probe: Discord showed `listening` before its handshake was answered. A gateway that
    reads the IDENTIFY and answers nothing leaves the account `connecting`; READY makes it
    `listening`."""
    socket = fake_channels.discord_gateway
    socket.silent = True
    await until(lambda: socket.identifies == 0 and socket.connections_open == 1)
    await trio.sleep(5)
    [account] = views.status(gateway)["channels"]
    assert account["inbound"]["state"] == "connecting"
    socket.answer_handshakes()
    await connected(fake_channels)
    await until(lambda: views.status(gateway)["channels"][0]["inbound"]["state"] == "listening")
