"""Channels that listen (SPEC 11): WeChat and Telegram long polls against the fake, on the
virtual clock, through the production listeners, turns, queue and adapters."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest
import trio

from trio_gateway.channels.listen import BACKOFF_MAX_SECONDS
from trio_gateway.http import views
from trio_gateway.log import MemorySink
from trio_gateway.policy.config import Config
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import Harness, fake_account
from trio_gateway.sim.runtime import quick_config

WX = "openclaw-weixin"
ACCOUNT = "bot1"


@pytest.fixture
def gateway_config() -> Config:
    return quick_config(
        **{
            "gateway.drain.timeoutSeconds": 10,
            "gateway.channelStopTimeoutSeconds": 2,
            f"channels.{WX}.accounts.{ACCOUNT}": fake_account(WX),
            f"channels.telegram.accounts.{ACCOUNT}": fake_account("telegram"),
            "agents.main.channels": [WX, "telegram"],
        }
    )


async def until(predicate: Callable[[], object], step: float = 0.01) -> None:
    """Virtual time passes until `predicate()` holds (each step costs no wall time); a day of
    virtual time without it fails the test instead of spinning forever."""
    with trio.fail_after(86_400):
        while True:
            if predicate():
                return
            await trio.sleep(step)


def sends(fakes: FakeChannels, channel: str = WX) -> list[dict[str, object]]:
    return [r.body["msg"] if channel == WX else r.body for r in fakes.requests_to(channel)]


async def replies(fakes: FakeChannels, count: int, channel: str = WX) -> list[str]:
    await until(lambda: len(fakes.delivered(channel)) >= count)
    return [m.text for m in fakes.delivered(channel)]


async def test_a_wechat_message_is_answered_in_its_conversation_with_its_context_token(
    gateway_harness: Harness, fake_channels: FakeChannels
) -> None:
    fake_channels.push(WX, "hello", sender="alice@im.wechat", context_token="ctx-A1")
    assert await replies(fake_channels, 1) == ["echo: hello"]
    [msg] = sends(fake_channels)
    assert (msg["to_user_id"], msg["context_token"]) == ("alice@im.wechat", "ctx-A1")
    cursor = gateway_harness.home.root / "inbound" / WX / f"{ACCOUNT}.json"
    assert json.loads(cursor.read_text()) == {"cursor": "1"}
    assert (WX, "start") in fake_channels.inbound.notified


async def test_each_message_answers_with_its_own_context_token_in_one_session(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    fake_channels.push(WX, "one", sender="bob@im.wechat", context_token="ctx-1")
    await replies(fake_channels, 1)
    fake_channels.push(WX, "two", sender="bob@im.wechat", context_token="ctx-2")
    await replies(fake_channels, 2)
    assert [m["context_token"] for m in sends(fake_channels)] == ["ctx-1", "ctx-2"]
    assert len(gateway.sessions) == 1  # the token is per message; the conversation is one


async def test_bots_and_our_own_replies_are_not_turns(gateway: Gateway, fake_channels: FakeChannels) -> None:
    fake_channels.push(WX, "I am a bot", bot=True)
    fake_channels.push("telegram", "beep", bot=True)
    fake_channels.push(WX, "person")
    await replies(fake_channels, 1)
    await trio.sleep(5)
    assert [m.text for m in fake_channels.delivered()] == ["echo: person"]


async def test_a_subagent_notice_goes_back_with_the_context_token(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    fake_channels.push(WX, "/spawn main /fail", sender="carol@im.wechat", context_token="ctx-C")
    # The reply and the failure notice, in either order: the subagent may fail before the
    # reply's send, and which is sent first is not what this test is about.
    delivered = fake_channels.delivered
    await until(lambda: len(delivered(WX)) >= 2 and any("fail" in m.text.lower() for m in delivered(WX)), 0.1)
    assert {m["context_token"] for m in sends(fake_channels)} == {"ctx-C"}
    assert {m["to_user_id"] for m in sends(fake_channels)} == {"carol@im.wechat"}


async def test_a_message_read_again_after_a_crash_is_not_answered_twice(
    gateway_harness: Harness, gateway: Gateway, fake_channels: FakeChannels
) -> None:
    fake_channels.push(WX, "once", sender="dan@im.wechat")
    await replies(fake_channels, 1)
    # A crash after the turn was written but before the cursor was: the cursor is behind.
    cursor = gateway_harness.home.root / "inbound" / WX / f"{ACCOUNT}.json"
    cursor.write_text(json.dumps({"cursor": "0"}))
    await gateway.request_drain("restart").done.wait()
    fake_channels.push(WX, "after", sender="dan@im.wechat")
    assert await replies(fake_channels, 2) == ["echo: once", "echo: after"]
    await trio.sleep(60)
    assert len(fake_channels.delivered(WX)) == 2


async def test_listeners_stop_at_the_start_of_a_drain_not_at_its_deadline(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await until(lambda: fake_channels.inbound.polls_open[WX] != 0, 0.01)
    await gateway.submit(agent_id="main", origin=None, prompt="/stall")  # holds the drain 10 s
    began = trio.current_time()
    done = gateway.request_drain("restart").done
    await until(lambda: not (fake_channels.inbound.polls_open[WX] or fake_channels.inbound.polls_open["telegram"]), 0)
    assert fake_channels.inbound.closed_at[0] == began  # the poll closed at the drain's start
    await done.wait()
    stopped = [e.message for e in gateway_log.tagged("CHANNEL") if e.message.startswith("Stopped")]
    assert f"Stopped channel={WX} account={ACCOUNT} in 0ms" in stopped
    assert (WX, "stop") in fake_channels.inbound.notified
    assert trio.current_time() - began == pytest.approx(10)  # the stalled turn, not the listener


async def test_a_hung_stop_call_is_bounded_by_channel_stop_timeout(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await until(lambda: fake_channels.inbound.polls_open[WX] != 0, 0.01)
    fake_channels.delay(WX, 3600)  # notifystop never answers
    began = trio.current_time()
    await gateway.request_drain("restart").done.wait()
    assert trio.current_time() - began == pytest.approx(2)  # channelStopTimeoutSeconds
    assert f"Stopped channel={WX} account={ACCOUNT} in 2000ms" in [e.message for e in gateway_log.tagged("CHANNEL")]


async def test_a_message_sent_during_a_drain_is_answered_once_by_the_next_generation(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    await gateway.submit(agent_id="main", origin=None, prompt="/stall")
    done = gateway.request_drain("restart").done
    await trio.sleep(1)
    fake_channels.push(WX, "during", sender="erin@im.wechat")
    await trio.sleep(1)
    assert fake_channels.delivered(WX) == []  # nobody listens while draining
    await done.wait()
    assert await replies(fake_channels, 1) == ["echo: during"]
    [session] = [s for s in gateway.sessions.values() if s.record.origin and s.record.origin.channel == WX]
    assert session.id.startswith("s-2-")  # generation 2 took it
    await trio.sleep(60)
    assert len(fake_channels.delivered(WX)) == 1


async def test_a_dropped_connection_reconnects_with_backoff(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    await until(lambda: fake_channels.inbound.polls_open[WX] != 0, 0.01)
    fake_channels.drop_connection(WX)
    fake_channels.push(WX, "still there?")
    assert await replies(fake_channels, 1) == ["echo: still there?"]
    [line] = [e for e in gateway_log.tagged("CHANNEL") if e.message.startswith("Reconnecting")]
    assert f"channel={WX}" in line.message


async def test_an_auth_failure_pauses_listener_and_sender_until_resumed(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    fake_channels.reject_auth(WX)
    await until(lambda: any(e.message.startswith("Paused") for e in gateway_log.tagged("CHANNEL")), 0.1)
    await trio.sleep(600)
    paused = [e for e in gateway_log.tagged("CHANNEL") if e.message.startswith("Paused")]
    assert len(paused) == 1
    assert "errcode -14" in paused[0].message
    [wx] = [c for c in views.status(gateway)["channels"] if c["channel"] == WX]
    assert wx["inbound"]["state"] == "paused"
    polls = len(fake_channels.requests_to(WX, "poll"))
    await trio.sleep(600)
    assert len(fake_channels.requests_to(WX, "poll")) == polls  # paused: no hammering
    fake_channels.accept_auth(WX)
    fake_channels.push(WX, "back")
    assert gateway.listeners is not None
    assert gateway.listeners.resume(WX, ACCOUNT)
    assert await replies(fake_channels, 1) == ["echo: back"]
    [wx] = [c for c in views.status(gateway)["channels"] if c["channel"] == WX]
    assert (wx["inbound"]["state"], wx["inbound"]["messages"]) == ("listening", 1)


async def test_telegram_long_poll_answers_the_chat_and_confirms_by_offset(
    gateway_harness: Harness, fake_channels: FakeChannels
) -> None:
    update = fake_channels.push("telegram", "hi bot", sender="555")
    assert await replies(fake_channels, 1, "telegram") == ["echo: hi bot"]
    assert fake_channels.delivered("telegram")[0].to == "555"
    cursor = gateway_harness.home.root / "inbound" / "telegram" / f"{ACCOUNT}.json"
    assert json.loads(cursor.read_text()) == {"cursor": int(update) + 1}
    await until(
        lambda: bool(
            any(r.body.get("offset") == int(update) + 1 for r in fake_channels.requests_to("telegram", "poll"))
        ),
        0.1,
    )


async def test_status_lists_every_account_with_its_inbound_state(gateway: Gateway, fake_channels: FakeChannels) -> None:
    fake_channels.push(WX, "count me")
    await replies(fake_channels, 1)
    channels = {c["channel"]: c for c in views.status(gateway)["channels"]}
    assert set(channels) == {WX, "telegram"}
    wx = channels[WX]["inbound"]
    assert (wx["mode"], wx["state"], wx["messages"]) == ("poll", "listening", 1)
    assert wx["lastMessageAgeSeconds"] is not None


def test_backoff_is_full_jitter_between_one_second_and_a_minute() -> None:
    from trio_gateway.policy import backoff

    rng = random.Random(1)
    waits = [backoff.delay(a, 1.0, BACKOFF_MAX_SECONDS, rng) for a in range(1, 40)]
    assert all(1.0 <= w <= 60.0 for w in waits)
    assert max(waits) > 30


async def test_channels_routes_and_metrics(gateway: Gateway, fake_channels: FakeChannels) -> None:
    from test_http_api import TOKEN, Driver

    from trio_gateway.http.app import GatewayApp

    call = Driver(GatewayApp(gateway, TOKEN, {}))
    fake_channels.push(WX, "metered")
    await replies(fake_channels, 1)
    fake_channels.reject_auth(WX)
    await until(lambda: any(c["inbound"]["state"] == "paused" for c in views.status(gateway)["channels"]), 0.1)
    listed = (await call("GET", "/v1/channels")).json["channels"]
    assert {(c["channel"], c["inbound"]["state"]) for c in listed} == {(WX, "paused"), ("telegram", "listening")}
    assert (await call("POST", "/v1/channels/slack/nope/resume")).status == 404
    fake_channels.accept_auth(WX)
    resumed = await call("POST", f"/v1/channels/{WX}/{ACCOUNT}/resume")
    assert resumed.json == {"channel": WX, "accountId": ACCOUNT, "resumed": True}
    await gateway.request_drain("restart").done.wait()
    lines = set((await call("GET", "/metrics")).body.decode().splitlines())
    assert f'trio_gateway_inbound_messages_total{{account="{ACCOUNT}",channel="{WX}"}} 1.0' in lines
    assert 'trio_gateway_channel_stop_seconds_bucket{le="0.005"} 2.0' in lines  # both stopped at once
    assert "trio_gateway_channel_stop_seconds_count 2.0" in lines


def test_scenario_inbound_action_names_a_channel_without_a_fake() -> None:
    from trio_gateway.scenario.format import ScenarioError
    from trio_gateway.scenario.parse import parse_text

    good = parse_text('[[action]]\nat = 1\ntype = "inbound"\ntext = "hi"\nfrom = "a@im.wechat"\n')
    assert [(a.channel, a.from_) for a in good.actions] == [(WX, "a@im.wechat")]  # type: ignore[union-attr]
    with pytest.raises(ScenarioError, match=r"action\[0\]\.channel"):
        parse_text('[[action]]\nat = 1\ntype = "inbound"\ntext = "hi"\nchannel = "console"\n')
