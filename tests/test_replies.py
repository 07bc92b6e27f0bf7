"""SPEC 15 "Replies as each platform shows them": chunks that fit the fakes' real limits, the
formatted text as sent, and Telegram's plain-text second try."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path

import pytest
import trio
from test_channels import ENV, channels, entry, fakes, get, make_config
from test_delivery import ScriptedChannel, make_rig

from trio_gateway import upstream as httpx
from trio_gateway.channels import discord, slack, telegram
from trio_gateway.channels.markdown import TextForm
from trio_gateway.channels.registry import ChannelSet
from trio_gateway.delivery.outbox import text_chunk_limits
from trio_gateway.errors import InsufficientStorageError
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.fake_channels import Delivered, FakeChannels
from trio_gateway.sim.fake_telegram import shown_text
from trio_gateway.sim.harness import Harness, fake_account
from trio_gateway.sim.runtime import quick_config
from trio_gateway.storage.atomic import in_thread
from trio_gateway.storage.home import Home

__all__ = ["channels", "fakes"]  # the fixtures, used by name

ADDRESS = {"telegram": "42", "discord": "channel:123456789012345678", "slack": "C0123456789"}
FORMS: dict[str, TextForm] = {"telegram": telegram.TEXT, "discord": discord.TEXT, "slack": slack.TEXT}

LONG = (
    "\n\n".join(
        f"Paragraph {i}: **bold** words & <angle> `code` with an emoji 👩‍💻 and a [link](https://e.x/{i})." * 3
        for i in range(60)
    )
    + "\n\n```python\n"
    + "\n".join(f"print({i} < {i + 1})" for i in range(400))
    + "\n```\n"
)


def _shown(name: str, sent: str) -> str:
    if name == "telegram":
        return shown_text(sent, "HTML")
    if name == "slack":
        return sent.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
    return sent


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


async def test_the_fakes_refuse_a_message_over_the_platform_limit(channels: ChannelSet, fakes: FakeChannels) -> None:
    over = {"telegram": "x" * 4097, "discord": "x" * 2001, "slack": "x" * 40_001}
    for name, text in over.items():
        outcome = await get(channels, name).send(entry(name, ADDRESS[name], text=text))
        assert outcome.kind == "permanent", (name, outcome)
    assert fakes.messages == []


async def test_a_long_reply_in_chunks_reaches_each_fake_whole(channels: ChannelSet, fakes: FakeChannels) -> None:
    assert len(LONG) > 10_000
    for name, form in FORMS.items():
        pieces = form.chunks(LONG)
        assert len(pieces) > 1
        for n, piece in enumerate(pieces, 1):
            outcome = await get(channels, name).send(entry(name, ADDRESS[name], text=piece, key=f"r:{n}"))
            assert outcome.ok, (name, n, outcome)
        shown = "\n".join(m.text for m in fakes.messages if m.channel == name)
        # What the person reads is what the whole reply would have shown: fence lines aside,
        # nothing lost, nothing doubled.
        expected = _shown(name, form.render(LONG))
        fence = re.compile(r"(?m)^```\w*$")
        assert _squeezed(fence.sub("", shown)) == _squeezed(fence.sub("", expected)), name


async def test_telegram_sends_html_and_counts_it_as_sent(channels: ChannelSet, fakes: FakeChannels) -> None:
    reply = "&" * 3000  # 3000 characters, 15000 as HTML (&amp;)
    pieces = telegram.TEXT.chunks(reply)
    assert all(len(telegram.TEXT.render(p)) <= 4096 for p in pieces)
    for n, piece in enumerate(pieces, 1):
        assert (await get(channels, "telegram").send(entry("telegram", "42", text=piece, key=f"k:{n}"))).ok
    assert "".join(m.text for m in fakes.messages) == reply


async def test_telegram_refusing_the_html_gets_the_same_entry_as_plain_text(tmp_path: Path) -> None:
    bodies: list[dict[str, object]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        if body.get("parse_mode") == "HTML":
            refusal = {"ok": False, "error_code": 400, "description": "Bad Request: can't parse entities: x"}
            return httpx.Response(400, json=refusal)
        return httpx.Response(200, json={"ok": True, "result": {"message_id": 1}})

    built = ChannelSet.build(make_config(), Home(tmp_path), ENV, httpx.MockTransport(answer), in_thread)
    outcome = await get(built, "telegram").send(entry("telegram", "42", text="**bold** <x>"))
    assert outcome.ok
    assert bodies == [
        {"chat_id": 42, "text": "<b>bold</b> &lt;x&gt;", "parse_mode": "HTML"},
        {"chat_id": 42, "text": "bold <x>"},
    ]


async def test_telegram_other_refusals_are_not_retried_as_plain(tmp_path: Path) -> None:
    calls: list[object] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(400, json={"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})

    built = ChannelSet.build(make_config(), Home(tmp_path), ENV, httpx.MockTransport(answer), in_thread)
    outcome = await get(built, "telegram").send(entry("telegram", "42", text="hi"))
    assert outcome.kind == "permanent"
    assert len(calls) == 1


# --- end to end: a model reply of any length, through the whole gateway -----------------------


async def test_a_ten_thousand_character_reply_arrives_whole_and_in_order(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Issue 21's report: a 10,000-character reply never arrived on Telegram. Now each of the
    three fakes that enforce their real limit gets it in chunks, in order, every chunk once."""
    config = quick_config(
        **{f"channels.{name}.accounts.acct": fake_account(name) for name in ADDRESS},
        **{"agents.main.channels": list(ADDRESS), "gateway.stalledTaskDetection.enabled": False},
    )
    harness = Harness.build(tmp_path, config)
    prompt = " ".join(f"Sentence {i} of a long answer, **with bold** & <angles>." for i in range(200))
    assert len(prompt) > 10_000
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        for name, to in ADDRESS.items():
            await harness.gateway.submit(agent_id="main", origin=Origin(name, to, "acct"), prompt=prompt)
        with trio.fail_after(600):
            # Polls the queue folder, which has no event to wait on; virtual seconds.
            while any(len(_sent(harness, n)) < 2 for n in ADDRESS) or await harness.pending():  # noqa: ASYNC110
                await trio.sleep(1)
        harness.gateway.request_drain("stop", force=True)
    for name in ADDRESS:
        shown = _sent(harness, name)
        assert len(shown) > 2, name
        keys = [m.key for m in shown if m.key is not None]
        assert len(keys) == len(set(keys)), name  # each chunk once
        assert "Sentence 0 of" in shown[0].text
        assert "Sentence 199 of" in shown[-1].text  # in order: the last chunk last
        assert _squeezed("".join(m.text for m in shown)).count("Sentence") == 200, name
    assert await harness.dead_letters() == []


def _sent(harness: Harness, name: str) -> list[Delivered]:
    return harness.messages(name)


async def test_a_long_notice_becomes_one_entry_per_chunk_keyed_in_order(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedChannel("telegram"))
    origin = Origin("telegram", "42")
    entries = await rig.outbox.submit_all(
        kind="reply", origin=origin, agent_id="main", text="word " * 2000, idempotency_key="turn-7"
    )
    assert len(entries) == 3
    assert [e.idempotency_key for e in entries] == ["turn-7:1", "turn-7:2", "turn-7:3"]
    assert [e.id for e in entries] == sorted(e.id for e in entries)  # created in order
    assert [e.id for e in await rig.queue.list_pending()] == [e.id for e in entries]
    assert _squeezed("".join(e.payload.text for e in entries)) == _squeezed("word " * 2000)
    [short] = await rig.outbox.submit_all(kind="reply", origin=origin, agent_id="main", text="hi", idempotency_key="t8")
    assert short.idempotency_key == "t8"  # a reply that fits keeps its key


async def test_an_accounts_text_chunk_limit_cuts_smaller(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedChannel("telegram"))
    rig.outbox.chunk_limits = {("telegram", "acct"): 100}
    entries = await rig.outbox.submit_all(
        kind="reply", origin=Origin("telegram", "42", "acct"), agent_id="main", text="word " * 100
    )
    assert len(entries) == 5
    assert all(len(e.payload.text) <= 100 for e in entries)
    assert [e.idempotency_key for e in entries] == [f"{entries[0].id}:{n}" for n in range(1, 6)]


def test_each_accounts_text_chunk_limit_is_read_from_the_config() -> None:
    config = quick_config(
        **{
            "channels.telegram.accounts.a": {**fake_account("telegram"), "textChunkLimit": 500},
            "channels.telegram.accounts.b": fake_account("telegram"),
        }
    )
    assert text_chunk_limits(config) == {("telegram", "a"): 500}


async def test_a_long_manual_delivery_is_chunked_too(tmp_path: Path) -> None:
    rig = make_rig(tmp_path, ScriptedChannel("telegram"))
    first = await rig.outbox.submit_manual("telegram", "42", None, "main", "word " * 2000)
    pending = await rig.queue.list_pending()
    assert len(pending) == 3
    assert pending[0].id == first.id
    assert [e.idempotency_key for e in pending] == [f"{first.id}:{n}" for n in (1, 2, 3)]


async def test_a_full_disk_midway_through_a_manual_delivery_says_what_was_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 507 after some chunks were already queued must say so: those will be sent, and a
    client that just retries the whole text sends them twice."""
    rig = make_rig(tmp_path, ScriptedChannel("telegram"))
    queue_type = type(rig.queue)
    real_enqueue = queue_type.enqueue
    calls: list[str] = []

    async def full_after_one(self: object, entry: DeliveryEntry) -> None:
        calls.append(entry.id)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        await real_enqueue(self, entry)  # type: ignore[arg-type]

    monkeypatch.setattr(queue_type, "enqueue", full_after_one)
    with pytest.raises(InsufficientStorageError) as caught:
        await rig.outbox.submit_manual("telegram", "42", None, "main", "word " * 2000)
    assert "1 of 3 chunks" in str(caught.value)
    assert calls[0] in str(caught.value)
    assert [e.id for e in await rig.queue.list_pending()] == calls[:1]
