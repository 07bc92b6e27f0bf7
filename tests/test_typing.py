"""SPEC 15 "Typing": the platform's typing indicator while a turn runs, best effort, each call
bounded, stopped at the turn's end and at a drain's start; the fakes record the calls."""

from __future__ import annotations

from pathlib import Path

import attrs
import trio
from test_channels import channels, fakes, get

from trio_gateway.channels.base import Channel
from trio_gateway.channels.registry import ChannelSet
from trio_gateway.delivery.typing import CALL_SECONDS, TypingIndicators
from trio_gateway.log import EventLog
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import Harness, HarnessModel, ModelSpec, fake_account
from trio_gateway.sim.runtime import quick_config

__all__ = ["channels", "fakes"]  # the fixtures, used by name


@attrs.define
class Recording:
    """An adapter whose typing calls are noted (at their start) and take `delay`."""

    calls: list[float] = attrs.Factory(list)
    delay: float = 0.0
    fail: bool = False
    name: str = "telegram"
    deduplicates: bool = False

    async def show_typing(self, to: str, context_token: str | None) -> None:
        self.calls.append(trio.current_time())
        if self.fail:
            raise RuntimeError("platform down")
        await trio.sleep(self.delay)


def _indicators(adapter: Recording) -> TypingIndicators:
    def lookup(channel: str, account_id: str | None) -> Channel | None:
        return adapter  # type: ignore[return-value]  # only show_typing is used

    return TypingIndicators(lookup, EventLog())


TG = Origin("telegram", "42", "acct")


async def test_typing_repeats_every_four_seconds_and_stops_with_the_turn(autojump_clock: trio.abc.Clock) -> None:
    adapter = Recording()
    typing = _indicators(adapter)
    async with typing.during(TG):
        await trio.sleep(10)
    await trio.sleep(20)  # nothing after the turn
    assert adapter.calls == [0.0, 4.0, 8.0]


async def test_a_slow_call_is_bounded_and_a_failing_one_never_reaches_the_turn(
    autojump_clock: trio.abc.Clock,
) -> None:
    slow = Recording(delay=60.0)
    async with _indicators(slow).during(TG):
        await trio.sleep(13)
    # each call cut at CALL_SECONDS, the next one `every` later
    assert slow.calls == [0.0, CALL_SECONDS + 4.0, 2 * (CALL_SECONDS + 4.0)]
    failing = Recording(fail=True)
    began = trio.current_time()
    async with _indicators(failing).during(TG):
        await trio.sleep(5)
    assert [t - began for t in failing.calls] == [0.0, 4.0]


async def test_a_drain_stops_every_indicator_at_once(autojump_clock: trio.abc.Clock) -> None:
    adapter = Recording(delay=1.0)
    typing = _indicators(adapter)
    async with typing.during(TG):
        await trio.sleep(5)
        typing.stop()  # the drain starts; the turn runs on
        await trio.sleep(20)
    assert adapter.calls == [0.0, 5.0]
    async with typing.during(TG):  # a turn started after the drain began shows none
        await trio.sleep(10)
    assert adapter.calls == [0.0, 5.0]


async def test_no_indicator_where_the_platform_has_none_or_there_is_no_origin(autojump_clock: trio.abc.Clock) -> None:
    adapter = Recording()
    typing = _indicators(adapter)
    for origin in (Origin("slack", "C0123456789"), Origin("console", "me"), None, Origin("telegram", None)):
        async with typing.during(origin):
            await trio.sleep(5)
    assert adapter.calls == []


async def test_the_fakes_record_each_platforms_typing_call(channels: ChannelSet, fakes: FakeChannels) -> None:
    await get(channels, "telegram").show_typing("42", None)  # type: ignore[attr-defined]
    await get(channels, "discord").show_typing("user:123456789012345678", None)  # type: ignore[attr-defined]
    wx = get(channels, "openclaw-weixin")
    await wx.show_typing("u1@im.wechat", "ctx-9")  # type: ignore[attr-defined]
    await wx.show_typing("u1@im.wechat", "ctx-9")  # type: ignore[attr-defined]  # the ticket is kept
    [tg] = fakes.requests_to("telegram", "typing")
    assert tg.body == {"chat_id": 42, "action": "typing"}
    [dc] = fakes.requests_to("discord", "typing")
    assert dc.path.endswith("/typing")
    [config] = fakes.requests_to("openclaw-weixin", "getconfig")
    assert config.body == {"ilink_user_id": "u1@im.wechat", "context_token": "ctx-9"}
    shown = fakes.requests_to("openclaw-weixin", "typing")
    assert len(shown) == 2
    assert all(r.body["typing_ticket"].startswith("ticket-") and r.body["status"] == 1 for r in shown)


async def test_a_running_turn_shows_typing_on_telegram_until_its_reply(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    config = quick_config(
        **{
            "channels.telegram.accounts.acct": fake_account("telegram"),
            "agents.main.channels": ["telegram"],
            "gateway.stalledTaskDetection.enabled": False,
        }
    )
    harness = Harness.build(tmp_path, config, model=HarnessModel(ModelSpec(delay_seconds=10.0)))
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        began = trio.current_time()
        await harness.gateway.submit(agent_id="main", origin=Origin("telegram", "42", "acct"), prompt="hello")
        await harness.wait_delivered(1, "telegram")
        await trio.sleep(30)
        # A second turn, then a drain while it runs: its indicator stops at the drain's start.
        await harness.gateway.submit(agent_id="main", origin=Origin("telegram", "42", "acct"), prompt="again")
        await trio.sleep(5)
        drain_at = trio.current_time()
        harness.gateway.request_drain("stop")
        await harness.wait_delivered(2, "telegram")
    typing = [r.at - began for r in harness.channels.requests_to("telegram", "typing")]
    first = [t for t in typing if t < 15]
    assert first == [0.0, 4.0, 8.0]  # every 4 s while the model worked, none after the reply
    second = [t + began for t in typing if t >= 15]
    assert second
    assert all(t <= drain_at for t in second)  # none after the drain started
