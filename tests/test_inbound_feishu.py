"""The Feishu long connection (SPEC 11): protobuf frames over the websocket, against the fake."""

from __future__ import annotations

import tracemalloc

import pytest
import trio
from test_inbound import until

from trio_gateway.channels.feishu import (
    MAX_PENDING_SPLITS,
    METHOD_DATA,
    SPLIT_EXPIRE_SECONDS,
    FeishuListener,
    Frame,
    SplitEvents,
    decode_frame,
    encode_frame,
    ping_seconds,
)
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


def test_unknown_fixed_width_fields_are_skipped_like_the_protobuf_runtime_does() -> None:
    """Field 15 as fixed32 (wire type 5) and field 14 as fixed64 (wire type 1): a newer server
    may add either; lark-oapi's protobuf runtime skips them, so must we (test_interop_feishu)."""
    frame = Frame(seq_id=1, service=7, method=1, headers=[("type", "event")], payload=b"{}")
    extra = bytes([15 << 3 | 5]) + b"\x01\x02\x03\x04" + bytes([14 << 3 | 1]) + b"\x00" * 8
    assert decode_frame(encode_frame(frame) + extra) == frame
    with pytest.raises(ValueError, match="truncated"):
        decode_frame(encode_frame(frame) + extra[:3])


def test_the_servers_ping_interval_is_clamped() -> None:
    assert ping_seconds(90) == 90.0
    assert ping_seconds(1e-9) == ping_seconds(0.5) == 5.0  # never a spin
    assert ping_seconds(1e9) == 600.0
    for nonsense in (float("nan"), float("inf"), -1, 0, True, "90", None):
        assert ping_seconds(nonsense) is None, nonsense  # the interval in force stays


async def test_the_ping_interval_a_pong_carries_is_obeyed_within_bounds(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    """lark-oapi reconfigures its ping loop from a pong's `ClientConfig`; so do we, clamped."""
    sock = fake_channels.feishu_socket
    sock.pong_config = {"PingInterval": 10, "ReconnectCount": -1}
    await until(lambda: sock.pings >= 1)
    await trio.sleep(90)  # the endpoint said 90 s: the first pong's 10 s is what counts now
    pings = sock.pings
    await trio.sleep(100)
    assert 9 <= sock.pings - pings <= 11
    sock.pong_config = {"PingInterval": 1}  # below the floor (1e-9 too: the unit test above)
    await trio.sleep(100)
    pings = sock.pings
    await trio.sleep(100)
    assert 19 <= sock.pings - pings <= 21  # every 5 s (MIN_PING_SECONDS), not a spin


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


def data_frame(message_id: str, total: str, seq: str, payload: bytes) -> Frame:
    headers = [("type", "event"), ("message_id", message_id), ("sum", total), ("seq", seq)]
    return Frame(method=METHOD_DATA, headers=headers, payload=payload)


async def test_a_lying_split_header_allocates_nothing_and_the_next_event_is_answered(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    """The probe: `sum=150000000` made the decoder allocate 1.19 GB. A header is not a size:
    a frame whose `sum`/`seq` is not sane is ignored (not acked), and the connection goes on."""
    sock = fake_channels.feishu_socket
    await until(lambda: sock.connections_open == 1)
    listener = feishu_listener(gateway)
    tracemalloc.start()
    try:
        for total, seq in (("150000000", "0"), ("3", "7"), ("x", "0"), ("2", "-1")):
            sock.inject(data_frame("om_liar", total, seq, b"{}"))
        await until(lambda: listener.splits.dropped == 4)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20
    fake_channels.push("feishu", "still here", sender="ou_abc123")
    await until(lambda: fake_channels.delivered("feishu"))
    assert sock.connections == 1


async def test_incomplete_split_events_are_bounded_and_expire(gateway: Gateway, fake_channels: FakeChannels) -> None:
    """The probe: 3,000 first halves that never complete were kept forever (332 MB). Now at
    most MAX_PENDING_SPLITS are held, and each expires SPLIT_EXPIRE_SECONDS after its first part."""
    sock = fake_channels.feishu_socket
    await until(lambda: sock.connections_open == 1)
    listener = feishu_listener(gateway)
    for n in range(3000):
        sock.inject(data_frame(f"om_half_{n}", "2", "0", b"x" * 1024))
    await until(lambda: listener.splits.dropped >= 3000 - MAX_PENDING_SPLITS)
    assert len(listener.splits.pending) == MAX_PENDING_SPLITS
    assert listener.splits.size == MAX_PENDING_SPLITS * 1024
    await trio.sleep(SPLIT_EXPIRE_SECONDS)
    sock.inject(data_frame("om_late", "2", "0", b"y"))
    await until(lambda: "om_late" in listener.splits.pending)
    assert list(listener.splits.pending) == ["om_late"]
    assert listener.splits.size == 1


def test_split_events_join_in_any_order_and_a_changed_sum_starts_over() -> None:
    splits = SplitEvents()
    assert splits.add("m", 3, 2, b"c", 0.0) is None
    assert splits.add("m", 3, 0, b"a", 1.0) is None
    assert splits.add("m", 3, 1, b"b", 2.0) == b"abc"
    assert (splits.pending, splits.size, splits.dropped) == ({}, 0, 0)
    assert splits.add("n", 2, 0, b"x", 0.0) is None
    assert splits.add("n", 3, 0, b"y", 0.0) is None  # a different sum: the old parts go
    assert (splits.size, splits.dropped) == (1, 1)
    assert splits.add("o", 2, 0, b"big", SPLIT_EXPIRE_SECONDS) is None  # "n" expired
    assert list(splits.pending) == ["o"]


def feishu_listener(gateway: Gateway) -> FeishuListener:
    assert gateway.listeners is not None
    [account] = gateway.listeners.accounts
    assert isinstance(account.listener, FeishuListener)
    return account.listener
