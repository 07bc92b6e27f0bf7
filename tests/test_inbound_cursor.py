"""The listeners' cursor moves only after the turn is durable (SPEC 11): WeChat's
`get_updates_buf` and Telegram's offset stay where they were while a message cannot be written
as a turn (a full sessions disk, by the fault kit), so the message is read again and answered
once space returns. A cursor saved before the turn would lose it: the next poll starts past it.
The socket listeners' acknowledgement is their cursor: Slack's envelope and Feishu's frame are
acknowledged only after the turn, so the platform redelivers what could not be written.
On trio's MockClock, through the production listeners, turns and queue against the fakes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from test_inbound import ACCOUNT, WX, until

from trio_gateway.channels.listen import BACKOFF_MAX_SECONDS
from trio_gateway.sim.faults import Faults
from trio_gateway.sim.harness import Harness, fake_account
from trio_gateway.sim.runtime import quick_config

CONFIG = quick_config(
    **{
        "gateway.drain.timeoutSeconds": 10,
        "gateway.channelStopTimeoutSeconds": 2,
        f"channels.{WX}.accounts.{ACCOUNT}": fake_account(WX),
        f"channels.telegram.accounts.{ACCOUNT}": fake_account("telegram"),
        f"channels.slack.accounts.{ACCOUNT}": {**fake_account("slack"), "appTokenEnv": "FAKE_SLACK_APP_TOKEN"},
        f"channels.feishu.accounts.{ACCOUNT}": fake_account("feishu"),
        "agents.main.channels": [WX, "telegram", "slack", "feishu"],
    }
)
SENDERS = {WX: "dan@im.wechat", "telegram": "555", "slack": "C0123456789", "feishu": "ou_abc123"}


async def soon(predicate: Callable[[], object]) -> None:
    """`until`, within a few reconnects' backoff (virtual time): what never comes fails fast."""
    with trio.fail_after(BACKOFF_MAX_SECONDS * 10):
        await until(predicate)


def cursor(harness: Harness, channel: str) -> Any:
    path = harness.home.root / "inbound" / channel / f"{ACCOUNT}.json"
    return json.loads(path.read_text())["cursor"]


def answers(harness: Harness, channel: str) -> list[str]:
    return [m.text for m in harness.channels.delivered(channel)]


def failed_polls(harness: Harness, channel: str) -> int:
    """How often the listener gave up on its poll or socket and reconnects (here: a turn not written)."""
    return sum(f"Reconnecting channel={channel} " in e.message for e in harness.sink.tagged("CHANNEL"))


@pytest.mark.parametrize("channel", [WX, "telegram"])
async def test_the_cursor_stays_behind_a_message_whose_turn_cannot_be_written(
    tmp_path: Path, autojump_clock: trio.abc.Clock, channel: str
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(sessions_disk="enospc"))
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        harness.channels.push(channel, "before", sender=SENDERS[channel])
        await until(lambda: answers(harness, channel) == ["echo: before"])
        kept = cursor(harness, channel)

        harness.faults.arm()  # the sessions disk is full: no turn can be written
        harness.channels.push(channel, "while full", sender=SENDERS[channel])
        await soon(lambda: failed_polls(harness, channel) >= 1)  # heard, and refused
        assert cursor(harness, channel) == kept  # not confirmed: the platform keeps it for us
        await soon(lambda: failed_polls(harness, channel) >= 3)  # read again, refused again, ...
        assert cursor(harness, channel) == kept
        assert answers(harness, channel) == ["echo: before"]

        harness.faults.clear()  # space returns: the message is read again and answered once
        await soon(lambda: len(answers(harness, channel)) >= 2)  # a lost message never comes
        assert cursor(harness, channel) != kept
        await trio.sleep(60)
        assert answers(harness, channel) == ["echo: before", "echo: while full"]
        harness.gateway.request_drain("stop", force=True)


@pytest.mark.parametrize("channel", ["slack", "feishu"])
async def test_a_message_whose_turn_cannot_be_written_is_not_acknowledged(
    tmp_path: Path, autojump_clock: trio.abc.Clock, channel: str
) -> None:
    harness = Harness.build(tmp_path, CONFIG, faults=Faults(sessions_disk="enospc"))
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        harness.faults.arm()
        harness.channels.push(channel, "while full", sender=SENDERS[channel])
        await soon(lambda: failed_polls(harness, channel) >= 2)  # heard, refused, redelivered, refused
        assert answers(harness, channel) == []
        harness.faults.clear()
        await soon(lambda: answers(harness, channel) == ["echo: while full"])
        await trio.sleep(60)
        assert answers(harness, channel) == ["echo: while full"]
        harness.gateway.request_drain("stop", force=True)
