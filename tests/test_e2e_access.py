"""Access (SPEC 15, issue 20) in real processes on loopback: a gateway long-polling the fake
Telegram and taking its webhook, strangers, groups, photos, edits. What a person would see
(the fake's delivered messages), what the operator reads (`[ACCESS]` lines, `/metrics`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from helpers import WAIT_SECONDS, Proc, cli, poll
from test_e2e_inbound import control, fake_url

from trio_gateway.sim.fake_inbound import Speech
from trio_gateway.sim.fake_telegram import BOT_USERNAME, message

pytestmark = pytest.mark.e2e
__all__ = ["fake_url"]
TG = "telegram"
SECRET = "tg-hook-secret"


def delivered(url: str) -> list[dict[str, Any]]:
    reply = httpx2.get(f"{url}/_fake/messages", timeout=WAIT_SECONDS, trust_env=False)
    return [m for m in reply.json() if m["channel"] == TG]


def sent_bodies(url: str) -> list[dict[str, Any]]:
    reply = httpx2.get(f"{url}/_fake/requests", timeout=WAIT_SECONDS, trust_env=False)
    return [r["body"] for r in reply.json() if r["channel"] == TG and r["op"] == "send"]


def push(url: str, text: str, sender: str = "4242", **speech: Any) -> None:
    control(url, action="push", channel=TG, text=text, sender=sender, speech=speech)


def cursor(home: Path, account: str) -> int | None:
    path = home / "inbound" / TG / f"{account}.json"
    return json.loads(path.read_text())["cursor"] if path.exists() else None


def metric(proc: Proc, reason: str, account: str = "poll") -> float:
    text = proc.http("GET", "/metrics").text
    found = re.search(
        rf'trio_gateway_inbound_refused_total\{{account="{account}",channel="telegram",reason="{reason}"\}} (\S+)', text
    )
    return float(found.group(1)) if found else 0.0


def sessions(proc: Proc) -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = proc.http("GET", "/v1/status").json()["sessions"]
    return listed


def start(tmp_path: Path, start_gateway: Callable[..., Proc], fake: str, **poll_account: Any) -> Proc:
    home = tmp_path / "home"
    home.mkdir()
    accounts = {
        "poll": {"baseUrl": fake, "tokenEnv": "E2E_TG_TOKEN", **poll_account},
        # The same rules, by webhook (a secret token means a webhook: SPEC 11).
        "hook": {"baseUrl": fake, "tokenEnv": "E2E_TG_TOKEN", "secretTokenEnv": "E2E_TG_SECRET", **poll_account},
    }
    config = {
        "gateway": {"drain": {"timeoutSeconds": 2}},
        "channels": {TG: {"accounts": accounts}},
        "agents": {"main": {"channels": [TG], "accountId": "poll"}, "hooked": {"channels": [TG], "accountId": "hook"}},
    }
    (home / "gateway.json").write_text(json.dumps(config))
    return start_gateway(home)


@pytest.fixture
def telegram_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2E_TG_TOKEN", "7000001:e2e")
    monkeypatch.setenv("E2E_TG_SECRET", SECRET)


@pytest.mark.usefixtures("telegram_env")
def test_a_strangers_thousand_messages_get_one_code_and_no_turn(
    tmp_path: Path, start_gateway: Callable[..., Proc], fake_url: str
) -> None:
    """`dmPolicy` is `pairing` by default: a stranger writing 1,000 times gets one message,
    carrying a code and the command that approves it, and the agent never hears them."""
    proc = start(tmp_path, start_gateway, fake_url)
    for n in range(1000):
        push(fake_url, f"let me in {n}")
    poll("the thousand messages read", lambda: (cursor(proc.home, "poll") or 0) >= 90_000 + 1000, timeout=120)
    poll("the refusals counted", lambda: metric(proc, "pairing") == 1000)
    [code_message] = delivered(fake_url)
    assert code_message["to"] == "4242"
    code = re.search(r"trio-gateway pairing approve telegram ([A-Z2-9]{8})", code_message["text"])
    assert code is not None, code_message["text"]
    assert not set(code.group(1)) & set("01OI")
    assert sessions(proc) == []
    assert "[ACCESS] Refused channel=telegram account=poll sender=4242 reason=pairing" in proc.log
    assert proc.log.count("Pairing code sent channel=telegram account=poll sender=4242") == 1
    assert code.group(1) not in proc.log  # the code is told to the sender, not to the log
    # The operator approves as the message says: the sender is answered from then on, without
    # a restart; the messages before the approval stay unanswered.
    approved = cli(proc.home, "pairing", "approve", TG, code.group(1))
    assert approved.returncode == 0, approved.stderr
    push(fake_url, "and now?")
    poll("the approved sender's answer", lambda: len(delivered(fake_url)) >= 2)
    assert [m["text"] for m in delivered(fake_url)][1:] == ["and now?"]
    assert len(sessions(proc)) == 1


@pytest.mark.usefixtures("telegram_env")
def test_groups_answer_mentions_in_the_group_and_its_topic_and_photos_get_the_notice(
    tmp_path: Path, start_gateway: Callable[..., Proc], fake_url: str
) -> None:
    """An open DM policy; groups by the default `mention`. Chatter is not a turn; a mention or
    a reply to the bot is, answered in the group (its topic too) with the mention taken out of
    the prompt; a photo alone gets the notice, a captioned one is read; edits, bots and
    service messages are never turns."""
    proc = start(tmp_path, start_gateway, fake_url, dmPolicy="open")
    group = "-1005550001"
    push(fake_url, "just chatting", "31", group=group)
    push(fake_url, "what time is it?", "31", group=group, mention=True, thread="7")
    push(fake_url, "and now?", "32", group=group, reply_to_bot=True)
    push(fake_url, "", media=True)
    push(fake_url, "look at this", "4243", media=True)
    push(fake_url, "changed my mind", edited=True)
    push(fake_url, "a member joined", "31", group=group, service=True, mention=True)
    control(fake_url, action="push", channel=TG, text="beep", sender="4244", bot=True)
    poll("four answers", lambda: len(delivered(fake_url)) >= 4)
    poll("every message read", lambda: (cursor(proc.home, "poll") or 0) >= 90_000 + 9)
    got = sorted((m["to"], m["text"]) for m in delivered(fake_url))
    assert got == sorted(
        [
            (group, "what time is it?"),  # the mention is not in the prompt
            (group, "and now?"),
            ("4242", "Sorry, I can only read text messages."),
            ("4243", "look at this"),
        ]
    )
    [in_topic] = [b for b in sent_bodies(fake_url) if "what time" in b["text"]]
    assert in_topic["message_thread_id"] == 7
    assert metric(proc, "not-addressed") == 1
    assert len(delivered(fake_url)) == 4  # nothing for the edit, the bot, the service message


@pytest.mark.usefixtures("telegram_env")
def test_the_webhook_takes_and_refuses_what_the_long_poll_does(
    tmp_path: Path, start_gateway: Callable[..., Proc], fake_url: str
) -> None:
    """Issue 20: the webhook turned bots' messages and edits into turns while polling skipped
    them. The same updates by webhook now get the same answers as by poll (the test above)."""
    proc = start(tmp_path, start_gateway, fake_url, dmPolicy="open")
    group = -1005550001
    updates = [
        {"message": message(1, "just chatting", "31", False, Speech(group=str(group)))},
        {"message": message(2, "what time is it?", "31", False, Speech(group=str(group), mention=True))},
        {"message": message(3, "", "4242", False, Speech(media=True))},
        {"edited_message": message(4, "changed my mind", "4242", False)},
        {"message": message(5, "beep", "4244", True)},
        {"message": message(6, "hello", "4242", False)},
    ]
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
    answers = []
    for n, update in enumerate(updates):
        reply = httpx2.post(
            f"{proc.url}/channels/telegram/hook/events",
            json={"update_id": 500 + n, **update},
            headers=headers,
            timeout=WAIT_SECONDS,
            trust_env=False,
        )
        assert reply.status_code == 200, reply.text
        answers.append(reply.json())
    assert [a.get("ignored") for a in answers] == [
        "not-addressed",
        None,
        "media-notice",
        "telegram update: not a message from a person",
        "telegram update: not a message from a person",
        None,
    ]
    poll("three answers", lambda: len(delivered(fake_url)) >= 3)
    assert sorted((m["to"], m["text"]) for m in delivered(fake_url)) == [
        (str(group), "what time is it?"),
        ("4242", "Sorry, I can only read text messages."),
        ("4242", "hello"),
    ]
    assert metric(proc, "not-addressed", "hook") == 1
    assert f"@{BOT_USERNAME}" not in json.dumps(sent_bodies(fake_url))
