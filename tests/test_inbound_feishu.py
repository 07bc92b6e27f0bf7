"""The Feishu long connection (SPEC 11): protobuf frames over the websocket, against the fake."""

from __future__ import annotations

import pytest
import trio
from test_inbound import until

from trio_gateway.channels.feishu import Frame, decode_frame, encode_frame
from trio_gateway.http import views
from trio_gateway.log import MemorySink
from trio_gateway.policy.config import Config
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import fake_account
from trio_gateway.sim.runtime import quick_config


@pytest.fixture
def gateway_config() -> Config:
    return quick_config(**{"channels.feishu.accounts.app1": fake_account("feishu"), "agents.main.channels": ["feishu"]})


def test_frames_round_trip_including_negative_int32_and_empty_fields() -> None:
    frame = Frame(2**63, 5, -3, 1, [("type", "event"), ("sum", "1"), ("", "")], "gzip", "json", b"\x00\xff", "log-1")
    assert decode_frame(encode_frame(frame)) == frame
    assert decode_frame(encode_frame(Frame())) == Frame()
    with pytest.raises(ValueError, match="truncated"):
        decode_frame(encode_frame(frame)[:-3])


async def test_an_event_is_answered_and_acked_after_its_turn(gateway: Gateway, fake_channels: FakeChannels) -> None:
    sock = fake_channels.feishu_socket
    await until(lambda: sock.connections_open == 1)
    fake_channels.push("feishu", "hello feishu", sender="ou_abc123")
    await until(lambda: fake_channels.delivered("feishu"))
    [reply] = fake_channels.delivered("feishu")
    assert (reply.to, reply.text) == ("ou_abc123", "echo: hello feishu")
    assert sock.unacked() == []
    await trio.sleep(200)
    assert sock.pings >= 2  # every PingInterval (90 s from the endpoint's ClientConfig)


async def test_split_events_are_joined_and_redeliveries_not_answered_twice(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    sock = fake_channels.feishu_socket
    sock.split = True
    await until(lambda: sock.connections_open == 1)
    fake_channels.push("feishu", "in two parts", sender="ou_abc123")
    fake_channels.push("feishu", "from an app", sender="ou_bot", bot=True)
    await until(lambda: fake_channels.delivered("feishu") and not sock.unacked())
    sock.acked.clear()  # the acks were lost with the connection
    fake_channels.drop_connection("feishu")
    await until(lambda: sock.connections == 2 and not sock.unacked(), 0.1)
    await trio.sleep(30)
    assert [m.text for m in fake_channels.delivered("feishu")] == ["echo: in two parts"]


async def test_a_refused_endpoint_pauses_the_account(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await until(lambda: fake_channels.feishu_socket.connections_open == 1)
    fake_channels.reject_auth("feishu")
    await until(lambda: any(e.message.startswith("Paused channel=feishu") for e in gateway_log.tagged("CHANNEL")), 0.1)
    assert "code 514" in views.status(gateway)["channels"][0]["inbound"]["pausedReason"]
