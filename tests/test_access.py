"""Access (SPEC 15, issue 20) on every listening platform, against the fakes on the virtual
clock, through the production listeners, access check, turns, queue and adapters: who may
talk, which group messages address the bot, where a group's reply goes, what a photo gets.
The rules themselves, as a table (`policy/access.py`), and the check with a test double of
the pairing book, are at the end."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import trio
from test_inbound import until

from trio_gateway.channels.access import Access
from trio_gateway.channels.inbound import Heard
from trio_gateway.http.metrics import render
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.access import ACCEPT, Facts, Pair, Refuse, decide
from trio_gateway.policy.config import AccountConfig, Config
from trio_gateway.policy.origin import Origin
from trio_gateway.policy.pairing import PendingCode
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels, Speech
from trio_gateway.sim.fake_discord import BOT_USER_ID
from trio_gateway.sim.fake_slack import BOT_USER
from trio_gateway.sim.harness import fake_account
from trio_gateway.sim.runtime import quick_config

WX = "openclaw-weixin"


@pytest.fixture
def gateway_config() -> Config:
    slack = {**fake_account("slack"), "appTokenEnv": "FAKE_SLACK_APP_TOKEN"}
    return quick_config(
        **{
            "channels.slack.accounts.T1": slack,
            "channels.discord.accounts.guild": fake_account("discord"),
            "channels.feishu.accounts.app1": fake_account("feishu"),
            # WeChat as SPEC 15's defaults have it: pairing, and a notice for photos.
            f"channels.{WX}.accounts.wx": {**fake_account(WX), "dmPolicy": "pairing"},
            "channels.telegram.accounts.tg": {
                **fake_account("telegram"),
                "dmPolicy": "allowlist",
                "allowFrom": ["4242"],
                "unsupportedMediaReply": "",
                "groups": ["-100777"],
                "groupAllowFrom": ["31"],
            },
            "agents.main.channels": ["slack", "discord", "feishu", WX, "telegram"],
        }
    )


def texts(fakes: FakeChannels, channel: str) -> list[tuple[str, str]]:
    return sorted((m.to, m.text) for m in fakes.delivered(channel))


async def test_slack_app_mention_and_message_of_one_mention_make_one_turn_in_its_thread(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    await until(lambda: fake_channels.slack_socket.connections_open == 1)
    fake_channels.push("slack", "chatter", speech=Speech(group="C0GROUP0001"))
    fake_channels.push("slack", "deploy?", speech=Speech(group="C0GROUP0001", mention=True, thread="1700.1"))
    await until(lambda: fake_channels.delivered("slack") and not fake_channels.slack_socket.unacked())
    await trio.sleep(5)
    assert texts(fake_channels, "slack") == [("C0GROUP0001", "echo: deploy?")]  # once, no <@BOT>
    [sent] = [r.body for r in fake_channels.requests_to("slack")]
    assert sent["thread_ts"] == "1700.1"
    assert f"<@{BOT_USER}>" not in json.dumps([t.prompt for s in gateway.sessions.values() for t in s.record.turns])


async def test_discord_a_guild_mention_is_answered_in_its_channel_and_chatter_is_not(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    await until(lambda: fake_channels.discord_gateway.connections_open == 1)
    fake_channels.push("discord", "chatter", speech=Speech(group="1234567890123456789"))
    fake_channels.push("discord", "hello bot", speech=Speech(group="1234567890123456789", mention=True))
    fake_channels.push("discord", "and again", speech=Speech(group="1234567890123456789", reply_to_bot=True))
    await until(lambda: len(fake_channels.delivered("discord")) >= 2)
    await trio.sleep(5)
    assert texts(fake_channels, "discord") == [
        ("channel:1234567890123456789", "echo: and again"),
        ("channel:1234567890123456789", "echo: hello bot"),
    ]
    assert f"<@{BOT_USER_ID}>" not in json.dumps([t.prompt for s in gateway.sessions.values() for t in s.record.turns])


async def test_feishu_a_group_mention_is_answered_to_the_group_chat_without_its_placeholder(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    fake_channels.push("feishu", "chatter", speech=Speech(group="oc_group_1"))
    fake_channels.push("feishu", "summarise", speech=Speech(group="oc_group_1", mention=True))
    await until(lambda: fake_channels.delivered("feishu"))
    await trio.sleep(5)
    assert texts(fake_channels, "feishu") == [("oc_group_1", "echo: summarise")]  # not "@_user_1 summarise"
    [sent] = fake_channels.requests_to("feishu")
    assert sent.query["receive_id_type"] == "chat_id"


async def test_wechat_pairing_gives_one_code_and_an_approved_sender_is_answered(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    for n in range(5):
        fake_channels.push(WX, f"hi {n}", sender="stranger@im.wechat")
    await until(lambda: fake_channels.delivered(WX))
    await trio.sleep(30)
    [code_message] = fake_channels.delivered(WX)
    code = code_message.text.split("pairing approve openclaw-weixin ")[1].strip()
    assert gateway.sessions == {}
    assert gateway.listeners is not None
    assert gateway.listeners.access is not None
    await gateway.listeners.access.book.approve(WX, code, dt.datetime.now(dt.UTC))
    fake_channels.push(WX, "now?", sender="stranger@im.wechat")
    fake_channels.push(WX, "", sender="stranger@im.wechat", speech=Speech(media=True))
    await until(lambda: len(fake_channels.delivered(WX)) >= 3)
    # The notice is sent at once; the answer after its turn: either may arrive first.
    assert sorted(m.text for m in fake_channels.delivered(WX)[1:]) == [
        "Sorry, I can only read text messages.",
        "echo: now?",
    ]
    refused = 'trio_gateway_inbound_refused_total{account="wx",channel="openclaw-weixin",reason="pairing"} 5.0'
    assert refused in render(gateway)


async def test_telegram_allowlist_groups_and_group_senders_and_a_silent_media_reply(
    gateway: Gateway, fake_channels: FakeChannels, gateway_log: MemorySink
) -> None:
    fake_channels.push("telegram", "let me in", sender="999")  # not in allowFrom: dropped, no reply
    fake_channels.push("telegram", "", sender="4242", speech=Speech(media=True))  # "" says nothing
    fake_channels.push("telegram", "hi", sender="4242", speech=Speech(group="-100666", mention=True))  # not listed
    fake_channels.push("telegram", "hi", sender="32", speech=Speech(group="-100777", mention=True))  # not allowed
    fake_channels.push("telegram", "ok", sender="31", speech=Speech(group="-100777", mention=True))
    fake_channels.push("telegram", "direct", sender="4242")
    await until(lambda: len(fake_channels.delivered("telegram")) >= 2)
    await trio.sleep(30)
    assert texts(fake_channels, "telegram") == [("-100777", "echo: ok"), ("4242", "echo: direct")]
    metrics = render(gateway)
    for reason in ("not-allowed", "group-not-allowed", "group-sender-not-allowed"):
        assert f'account="tg",channel="telegram",reason="{reason}"}} 1.0' in metrics
    line = "[ACCESS] Refused channel=telegram account=tg sender=999 reason=not-allowed"
    assert any(line in logged for logged in gateway_log.lines())


async def test_socket_platforms_skip_bots_edits_and_service_messages_and_answer_a_photo_with_the_notice(
    gateway: Gateway, fake_channels: FakeChannels
) -> None:
    """SPEC 15 "consistency": what is not a turn on Telegram is not one on Slack, Discord and
    Feishu either; a direct photo gets the account's `unsupportedMediaReply` on each."""
    await until(lambda: fake_channels.slack_socket.connections_open == 1)
    await until(lambda: fake_channels.discord_gateway.connections_open == 1)
    for channel, dm in (("slack", "D0DIRECT01"), ("discord", "1234567890123456700")):
        fake_channels.push(channel, "beep", sender=dm, bot=True)
        fake_channels.push(channel, "fixed typo", sender=dm, speech=Speech(edited=True))
        fake_channels.push(channel, "", sender=dm, speech=Speech(media=True))
    fake_channels.push("discord", "joined", sender="1234567890123456700", speech=Speech(service=True))
    fake_channels.push("feishu", "beep", bot=True)
    fake_channels.push("feishu", "", speech=Speech(media=True))
    notice = "Sorry, I can only read text messages."
    await until(lambda: all(fake_channels.delivered(c) for c in ("slack", "discord", "feishu")))
    await trio.sleep(10)
    assert [m.text for m in fake_channels.delivered()] == [notice] * 3
    assert gateway.sessions == {}


def test_a_wechat_group_message_is_a_group_message_never_addressed() -> None:
    from trio_gateway.channels.weixin import heard

    msg = {"message_type": 1, "message_id": 9, "from_user_id": "a@im.wechat", "group_id": "g1@im.wechat",
           "item_list": [{"type": 1, "text_item": {"text": "@bot hi"}}]}  # fmt: skip
    found = heard(msg)
    assert found is not None
    assert (found.chat, found.to, found.sender, found.addressed) == ("group", "g1@im.wechat", "a@im.wechat", False)


# --- the rules, as a table ----------------------------------------------------------------------

DM = Facts("direct", "7", "7", addressed=False)
GROUP = Facts("group", "7", "-100", addressed=False)


@pytest.mark.parametrize(
    ("keys", "facts", "approved", "decision"),
    [
        ({}, DM, False, Pair()),
        ({}, DM, True, ACCEPT),
        ({"allow_from": ["7"]}, DM, False, ACCEPT),
        ({"allow_from": ["*"]}, DM, False, ACCEPT),
        ({"dm_policy": "allowlist"}, DM, False, Refuse("not-allowed")),
        ({"dm_policy": "allowlist"}, DM, True, ACCEPT),
        ({"dm_policy": "open"}, DM, False, ACCEPT),
        ({"dm_policy": "disabled", "allow_from": ["7"]}, DM, True, Refuse("dm-disabled")),
        ({}, Facts("direct", None, "7", False), False, Refuse("no-sender")),
        ({}, GROUP, False, Refuse("not-addressed", "debug")),
        ({}, Facts("group", "7", "-100", True), False, ACCEPT),
        ({"group_policy": "open"}, GROUP, False, ACCEPT),
        ({"group_policy": "disabled"}, Facts("group", "7", "-100", True), False, Refuse("group-disabled")),
        ({"groups": ["-200"]}, Facts("group", "7", "-100", True), False, Refuse("group-not-allowed")),
        ({"group_allow_from": ["8"]}, Facts("group", "7", "-100", True), False, Refuse("group-sender-not-allowed")),
        ({"group_allow_from": ["7"], "groups": ["-100"]}, Facts("group", "7", "-100", True), False, ACCEPT),
    ],
)
def test_the_rules(keys: dict[str, object], facts: Facts, approved: bool, decision: object) -> None:
    assert decide(AccountConfig(**keys), facts, approved) == decision  # type: ignore[arg-type]


class DoubleBook:
    """The `PairingBook` protocol's two questions the check asks, answered from a script."""

    def __init__(self, approved: set[str], codes: list[str | None]) -> None:
        self.approved, self.codes, self.asked = approved, codes, 0

    async def is_approved(self, channel: str, account_id: str, sender: str) -> bool:
        self.asked += 1
        return sender in self.approved

    async def offer_code(self, channel: str, account_id: str, sender: str, now: dt.datetime) -> PendingCode | None:
        code = self.codes.pop(0)
        return None if code is None else PendingCode(channel, account_id, sender, code, now, now)


async def test_the_check_sends_a_code_only_when_the_book_gives_one_and_asks_only_when_it_matters() -> None:
    said: list[tuple[str, str]] = []

    async def say(agent_id: str, origin: Origin, text: str, key: str) -> None:
        said.append((origin.to or "", key))

    book = DoubleBook({"friend"}, ["ABCDEFGH", None])
    access = Access(book, EventLog(), lambda: dt.datetime(2026, 12, 7, tzinfo=dt.UTC), say)  # type: ignore[arg-type]
    pairing = AccountConfig()
    origin = Origin("telegram", "s", "a")
    assert await access.check("telegram", "a", "main", pairing, Heard("1", "s", "hi", sender="s"), origin) == "pairing"
    assert await access.check("telegram", "a", "main", pairing, Heard("2", "s", "hi", sender="s"), origin) == "pairing"
    assert said == [("s", "pairing:telegram:a:s:ABCDEFGH")]
    assert await access.check("telegram", "a", "main", pairing, Heard("3", "f", "hi", sender="friend"), origin) is None
    asked = book.asked
    await access.check(
        "telegram", "a", "main", AccountConfig(dm_policy="open"), Heard("4", "x", "hi", sender="x"), origin
    )
    assert book.asked == asked  # an open account never asks the book
    assert access.refused == {("telegram", "a", "pairing"): 2}
