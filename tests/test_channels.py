"""Each adapter against the in-process fake: request shapes, idempotency, tokens, errors."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import trio

from trio_gateway import upstream as httpx
from trio_gateway.channels import registry
from trio_gateway.channels.base import Channel
from trio_gateway.channels.console import ConsoleChannel
from trio_gateway.channels.feishu import FeishuAccount, receive_id_type
from trio_gateway.channels.http import stable_key
from trio_gateway.channels.registry import ChannelSet
from trio_gateway.channels.slack import SlackAccount
from trio_gateway.errors import ConfigError
from trio_gateway.policy.config import ChannelConfig, Config
from trio_gateway.policy.entry import DeliveryEntry, Payload
from trio_gateway.sim.fake_channels import FakeChannels, serve_fake_channels
from trio_gateway.storage.atomic import in_thread
from trio_gateway.storage.home import Home

TELEGRAM_TOKEN = "123456:AAsecret-telegram_token"
ENV = {
    "FEISHU_SECRET": "feishu-app-secret",
    "WEIXIN_TOKEN": "wx-token",
    "SLACK_TOKEN": "xoxb-slack",
    "DISCORD_TOKEN": "discord-token",
    "TELEGRAM_TOKEN": TELEGRAM_TOKEN,
}
BASE = "http://fake.test"


def make_config(base_url: str = BASE, context_token: str | None = "ctx-1") -> Config:
    def one(channel: str, **kwargs: str | None) -> ChannelConfig:
        # Each kind's account class, with its own keys, as gateway.json's parse builds it.
        account = registry.BY_NAME[channel].accounts.account
        return ChannelConfig({"acct": account(base_url=base_url, **kwargs)})

    channels = {
        "feishu": {"app_id": "cli_app", "app_secret_env": "FEISHU_SECRET"},
        "openclaw-weixin": {"token_env": "WEIXIN_TOKEN", "context_token": context_token},
        "slack": {"token_env": "SLACK_TOKEN"},
        "discord": {"token_env": "DISCORD_TOKEN"},
        "telegram": {"token_env": "TELEGRAM_TOKEN"},
    }
    return Config(channels={name: one(name, **keys) for name, keys in channels.items()})


def entry(channel: str, to: str, text: str = "hello", key: str = "key-1", entry_id: str = "e1") -> DeliveryEntry:
    now = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
    return DeliveryEntry(
        id=entry_id,
        kind="reply",
        channel=channel,
        to=to,
        account_id="acct",
        agent_id="main",
        requester_origin=None,
        payload=Payload(text),
        idempotency_key=key,
        created_at=now,
        next_attempt_at=now,
    )


@pytest.fixture
def fakes() -> FakeChannels:
    return FakeChannels(
        tokens={
            "feishu": ENV["FEISHU_SECRET"],
            "openclaw-weixin": ENV["WEIXIN_TOKEN"],
            "slack": ENV["SLACK_TOKEN"],
            "discord": ENV["DISCORD_TOKEN"],
            "telegram": TELEGRAM_TOKEN,
        }
    )


@pytest.fixture
def channels(fakes: FakeChannels, tmp_path: Path) -> ChannelSet:
    return ChannelSet.build(make_config(), Home(tmp_path), ENV, fakes.transport(), in_thread)


def get(channels: ChannelSet, name: str) -> Channel:
    channel = channels.get(name, "acct")
    assert channel is not None
    return channel


# --- request shapes ---------------------------------------------------------------------------


async def test_feishu_request_shape_and_token_cached(channels: ChannelSet, fakes: FakeChannels) -> None:
    feishu = get(channels, "feishu")
    assert (await feishu.send(entry("feishu", "ou_abc", key="k1"))).ok
    assert (await feishu.send(entry("feishu", "ou_abc", key="k2"))).ok
    tokens = fakes.requests_to("feishu", "token")
    assert len(tokens) == 1
    assert tokens[0].body == {"app_id": "cli_app", "app_secret": "feishu-app-secret"}
    sends = fakes.requests_to("feishu")
    assert [r.query["receive_id_type"] for r in sends] == ["open_id", "open_id"]
    assert sends[0].headers["authorization"].startswith("Bearer t-fake-")
    body = sends[0].body
    assert body["receive_id"] == "ou_abc"
    assert body["msg_type"] == "text"
    assert json.loads(body["content"]) == {"text": "hello"}
    assert body["uuid"] == "k1"


async def test_feishu_token_refreshed_before_expiry(
    channels: ChannelSet, fakes: FakeChannels, autojump_clock: trio.abc.Clock
) -> None:
    feishu = get(channels, "feishu")
    assert (await feishu.send(entry("feishu", "ou_a", key="k1"))).ok
    await trio.sleep(7200 - 200)  # inside the refresh margin, before the real expiry
    assert (await feishu.send(entry("feishu", "ou_a", key="k2"))).ok
    assert len(fakes.requests_to("feishu", "token")) == 2


async def test_feishu_refetches_revoked_token_once(channels: ChannelSet, fakes: FakeChannels) -> None:
    feishu = get(channels, "feishu")
    assert (await feishu.send(entry("feishu", "ou_a", key="k1"))).ok
    fakes.expire_feishu_tokens()
    assert (await feishu.send(entry("feishu", "ou_a", key="k2"))).ok
    assert len(fakes.requests_to("feishu", "token")) == 2
    assert [m.key for m in fakes.delivered("feishu")] == ["k1", "k2"]


async def test_feishu_concurrent_sends_fetch_one_token(
    channels: ChannelSet, fakes: FakeChannels, autojump_clock: trio.abc.Clock
) -> None:
    feishu = get(channels, "feishu")
    fakes.delay("feishu", 1.0)  # every send waits on the token fetch in flight
    async with trio.open_nursery() as nursery:
        for i in range(5):
            nursery.start_soon(feishu.send, entry("feishu", "ou_a", key=f"k{i}"))
    assert len(fakes.requests_to("feishu", "token")) == 1
    assert len(fakes.delivered("feishu")) == 5


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("ou_123", "open_id"),
        ("on_123", "union_id"),
        ("oc_123", "chat_id"),
        ("someone@example.com", "email"),
        ("a1b2c3", "user_id"),
    ],
)
def test_feishu_receive_id_type(address: str, kind: str) -> None:
    assert receive_id_type(address) == kind


async def test_feishu_long_key_derived_stably(channels: ChannelSet, fakes: FakeChannels) -> None:
    key = "x" * 80
    feishu = get(channels, "feishu")
    assert (await feishu.send(entry("feishu", "ou_a", key=key))).ok
    assert (await feishu.send(entry("feishu", "ou_a", key=key))).ok
    uuids = [r.body["uuid"] for r in fakes.requests_to("feishu")]
    assert uuids == [stable_key(key, 50)] * 2
    assert len(uuids[0]) == 50
    assert len(fakes.delivered("feishu")) == 1, "the same key must reach the user once"


async def test_weixin_request_shape(channels: ChannelSet, fakes: FakeChannels) -> None:
    assert (await get(channels, "openclaw-weixin").send(entry("openclaw-weixin", "o9cq@im.wechat", key="k9"))).ok
    (request,) = fakes.requests_to("openclaw-weixin")
    assert request.path == "/ilink/bot/sendmessage"
    assert request.headers["authorization"] == "Bearer wx-token"
    assert request.headers["authorizationtype"] == "ilink_bot_token"
    assert request.body == {
        "msg": {
            "to_user_id": "o9cq@im.wechat",
            "client_id": "k9",
            "message_type": 2,
            "message_state": 2,
            "item_list": [{"type": 1, "text_item": {"text": "hello"}}],
            "context_token": "ctx-1",
        }
    }


async def test_weixin_session_expired_pauses(channels: ChannelSet, fakes: FakeChannels) -> None:
    fakes.reject("openclaw-weixin", code=-14)
    outcome = await get(channels, "openclaw-weixin").send(entry("openclaw-weixin", "o9@im.wechat"))
    assert outcome.kind == "paused"
    assert "-14" in outcome.reason
    assert fakes.delivered() == []


async def test_slack_request_shape(channels: ChannelSet, fakes: FakeChannels) -> None:
    assert (await get(channels, "slack").send(entry("slack", "C0123456789", text="hi"))).ok
    (request,) = fakes.requests_to("slack")
    assert request.path == "/chat.postMessage"
    assert request.headers["authorization"] == "Bearer xoxb-slack"
    assert request.headers["content-type"].startswith("application/json")
    assert request.body == {"channel": "C0123456789", "text": "hi"}


async def test_discord_dm_channel_created_once(channels: ChannelSet, fakes: FakeChannels) -> None:
    discord = get(channels, "discord")
    user = "user:123456789012345678"
    assert (await discord.send(entry("discord", user, key="k1"))).ok
    assert (await discord.send(entry("discord", user, key="k2"))).ok
    (dm,) = fakes.requests_to("discord", "dm")
    assert dm.path == "/users/@me/channels"
    assert dm.body == {"recipient_id": "123456789012345678"}
    assert dm.headers["authorization"] == "Bot discord-token"
    sends = fakes.requests_to("discord")
    assert sends[0].body == {"content": "hello", "nonce": "k1", "enforce_nonce": True}
    assert re.fullmatch(r"/channels/\d{17,20}/messages", sends[0].path)
    assert sends[1].path == sends[0].path
    assert [m.to for m in fakes.delivered("discord")] == [user, user]


async def test_discord_channel_address_and_nonce_dedup(channels: ChannelSet, fakes: FakeChannels) -> None:
    discord = get(channels, "discord")
    long_key = "delivery-0123456789-abcdefghij"
    for _ in range(2):
        assert (await discord.send(entry("discord", "channel:223456789012345678", key=long_key))).ok
    assert fakes.requests_to("discord", "dm") == []
    nonces = {r.body["nonce"] for r in fakes.requests_to("discord")}
    assert nonces == {stable_key(long_key, 25)}
    assert len(fakes.delivered("discord")) == 1


async def test_telegram_request_shape(channels: ChannelSet, fakes: FakeChannels) -> None:
    telegram = get(channels, "telegram")
    assert (await telegram.send(entry("telegram", "-100200300"))).ok
    assert (await telegram.send(entry("telegram", "@news"))).ok
    first, second = fakes.requests_to("telegram")
    assert first.path == f"/bot{TELEGRAM_TOKEN}/sendMessage"
    assert first.body == {"chat_id": -100200300, "text": "hello"}
    assert second.body["chat_id"] == "@news"
    assert telegram.deduplicates is False


async def test_telegram_token_never_in_reason(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.TransportError(f"cannot reach {request.url}", request=request)

    channels = ChannelSet.build(make_config(), Home(tmp_path), ENV, httpx.MockTransport(refuse), in_thread)
    outcome = await get(channels, "telegram").send(entry("telegram", "42"))
    assert outcome.kind == "retry"
    assert "TransportError" in outcome.reason
    assert TELEGRAM_TOKEN not in outcome.reason
    assert "AAsecret" not in outcome.reason


async def test_telegram_url_seen_by_httpx_holds_no_token(fakes: FakeChannels, tmp_path: Path) -> None:
    seen: list[str] = []

    async def log_request(request: httpx.Request) -> None:
        seen.append(str(request.url))

    channels = ChannelSet.build(make_config(), Home(tmp_path), ENV, fakes.transport(), in_thread)
    telegram = get(channels, "telegram")
    telegram.http.client.event_hooks["request"].append(log_request)  # type: ignore[attr-defined]
    assert (await telegram.send(entry("telegram", "42"))).ok
    assert seen == ["http://fake.test/botTOKEN/sendMessage"]
    assert fakes.requests_to("telegram")[0].path == f"/bot{TELEGRAM_TOKEN}/sendMessage"


# --- errors -----------------------------------------------------------------------------------


async def test_feishu_invalid_ids_is_permanent(channels: ChannelSet, fakes: FakeChannels) -> None:
    fakes.reject("feishu", code=99992360, message="Invalid ids")
    outcome = await get(channels, "feishu").send(entry("feishu", "ou_gone"))
    assert outcome.kind == "permanent"
    assert outcome.reason == "HTTP 400 feishu_code 99992360 Invalid ids"


async def test_http_200_with_error_code_is_not_ok(channels: ChannelSet, fakes: FakeChannels) -> None:
    fakes.reject("feishu", code=230020, status=200, message="frequency limit")
    outcome = await get(channels, "feishu").send(entry("feishu", "ou_a"))
    assert outcome.kind == "rate_limited"
    fakes.reject("slack", code="not_in_channel")
    assert (await get(channels, "slack").send(entry("slack", "C0123456789"))).kind == "permanent"


async def test_fail_next_then_accept(channels: ChannelSet, fakes: FakeChannels) -> None:
    slack = get(channels, "slack")
    fakes.fail("slack", times=2)
    kinds = [(await slack.send(entry("slack", "C0123456789"))).kind for _ in range(3)]
    assert kinds == ["retry", "retry", "ok"]
    assert len(fakes.delivered("slack")) == 1


@pytest.mark.parametrize(
    ("channel", "to"),
    [
        ("feishu", "ou_a"),
        ("openclaw-weixin", "u@im.wechat"),
        ("slack", "C0123456789"),
        ("discord", "channel:223456789012345678"),
        ("telegram", "42"),
    ],
)
async def test_rate_limit_carries_delay(channels: ChannelSet, fakes: FakeChannels, channel: str, to: str) -> None:
    fakes.rate_limit(channel, retry_after=7)
    outcome = await get(channels, channel).send(entry(channel, to))
    assert outcome.kind == "rate_limited"
    assert outcome.retry_after == 7.0


@pytest.mark.parametrize("error", [httpx.TransportError, httpx.ReadTimeout])
async def test_network_errors_are_retry(tmp_path: Path, error: type[httpx.TransportError]) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    channels = ChannelSet.build(make_config(), Home(tmp_path), ENV, httpx.MockTransport(broken), in_thread)
    for name, to in [("feishu", "ou_a"), ("slack", "C0123456789"), ("discord", "user:123456789012345678")]:
        outcome = await get(channels, name).send(entry(name, to))
        assert outcome.kind == "retry", name
        assert "network error" in outcome.reason


async def test_slow_answer_is_cut_by_caller_deadline(
    channels: ChannelSet, fakes: FakeChannels, autojump_clock: trio.abc.Clock
) -> None:
    fakes.delay("slack", 120)
    start = trio.current_time()
    with trio.move_on_after(30) as scope:
        await get(channels, "slack").send(entry("slack", "C0123456789"))
    assert scope.cancelled_caught
    assert trio.current_time() - start == pytest.approx(30)
    fakes.accept("slack")
    assert (await get(channels, "slack").send(entry("slack", "C0123456789"))).ok


# --- console ----------------------------------------------------------------------------------


async def test_console_appends_once_per_idempotency_key(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "console.jsonl"
    console = ConsoleChannel(path)
    assert (await console.send(entry("console", "me", entry_id="e1"))).ok
    assert (await console.send(entry("console", "me", entry_id="e1"))).ok
    assert (await console.send(entry("console", "me", text="again", key="key-2", entry_id="e2"))).ok
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["e1", "e2"]
    assert lines[0] == {
        "id": "e1",
        "channel": "console",
        "to": "me",
        "accountId": "acct",
        "agentId": "main",
        "kind": "reply",
        "text": "hello",
        "idempotencyKey": "key-1",
    }
    # A fresh adapter (a restarted gateway) still sees what the file holds.
    assert (await ConsoleChannel(path).send(entry("console", "me", key="key-2", entry_id="e2"))).ok
    assert len(path.read_text().splitlines()) == 2


async def test_console_survives_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "console.jsonl"
    path.write_text('{"id": "e0"}\n{"id": "e1", "te')
    assert (await ConsoleChannel(path).send(entry("console", "me", entry_id="e1"))).ok
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["id"] == "e1"


# --- registry ---------------------------------------------------------------------------------


def test_missing_env_var_is_config_error(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "SLACK_TOKEN"}
    with pytest.raises(ConfigError) as caught:
        ChannelSet.build(make_config(), Home(tmp_path), env, None, in_thread)
    assert caught.value.path == "channels.slack.accounts.acct.tokenEnv"
    assert caught.value.what == "environment variable SLACK_TOKEN is not set"


def test_a_named_but_unset_slack_app_token_is_config_error_before_anything_opens(tmp_path: Path) -> None:
    """Slack's own check (`appTokenEnv` is its key): named, its variable must be set; unnamed,
    the account sends and takes webhooks without it."""
    named = SlackAccount(base_url=BASE, token_env="SLACK_TOKEN", app_token_env="SLACK_APP")
    with pytest.raises(ConfigError) as caught:
        registry.check(Config(channels={"slack": ChannelConfig({"s": named})}), ENV)
    assert str(caught.value) == "channels.slack.accounts.s.appTokenEnv: environment variable SLACK_APP is not set"
    registry.check(Config(channels={"slack": ChannelConfig({"s": named})}), {**ENV, "SLACK_APP": "xapp"})
    unnamed = SlackAccount(base_url=BASE, token_env="SLACK_TOKEN")
    registry.check(Config(channels={"slack": ChannelConfig({"s": unnamed})}), ENV)


def test_missing_feishu_app_id_is_config_error(tmp_path: Path) -> None:
    config = Config(channels={"feishu": ChannelConfig({"a": FeishuAccount(base_url=BASE, app_secret_env="X")})})
    with pytest.raises(ConfigError, match=r"channels\.feishu\.accounts\.a\.appId"):
        ChannelSet.build(config, Home(tmp_path), {"X": "1"}, None, in_thread)


def test_base_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"channels\.feishu\.accounts\.acct\.baseUrl: must be an http\(s\) URL"):
        ChannelSet.build(make_config(base_url="slack.com/api"), Home(tmp_path), ENV, None, in_thread)


async def test_registry_lookup(channels: ChannelSet) -> None:
    assert channels.get("console", None) is channels.get("console", "anything")
    assert channels.get("slack", None) is channels.get("slack", "acct")
    assert channels.get("slack", "other") is None
    assert channels.get("nope", None) is None
    names = {c.name: c.deduplicates for c in channels.all()}
    assert names == {
        "console": True,
        "feishu": True,
        "openclaw-weixin": True,
        "slack": False,
        "discord": True,
        "telegram": False,
    }
    await channels.aclose()


async def test_default_config_has_console_only(tmp_path: Path) -> None:
    channels = ChannelSet.build(Config(), Home(tmp_path), {}, None, in_thread)
    assert [c.name for c in channels.all()] == ["console"]
    assert (await channels.get("console", None).send(entry("console", "me"))).ok  # type: ignore[union-attr]
    assert (tmp_path / "logs" / "console.jsonl").exists()


# --- the fake on loopback ---------------------------------------------------------------------


async def test_fake_on_loopback_serves_real_clients(tmp_path: Path) -> None:
    fakes = FakeChannels()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_channels, fakes)
        assert url.startswith("http://127.0.0.1:")
        channels = ChannelSet.build(make_config(url), Home(tmp_path), ENV, None, in_thread)
        assert (await get(channels, "feishu").send(entry("feishu", "oc_chat"))).ok
        async with httpx.AsyncClient(base_url=url) as control:
            r = await control.post("/_fake/control", json={"action": "reject", "channel": "slack"})
            assert r.status_code == 200
            outcome = await get(channels, "slack").send(entry("slack", "C0123456789"))
            assert outcome.kind == "permanent"
            messages = (await control.get("/_fake/messages")).json()
        assert messages == [{"channel": "feishu", "to": "oc_chat", "text": "hello", "key": "key-1"}]
        await channels.aclose()
        nursery.cancel_scope.cancel()


@pytest.mark.e2e
def test_fake_as_a_process_prints_its_url() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_gateway.sim.fake_channels", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        post = urllib.request.Request(
            f"{url}/chat.postMessage",
            data=json.dumps({"channel": "C1", "text": "x"}).encode(),
            headers={"Authorization": "Bearer t", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(post, timeout=30) as reply:
            assert json.load(reply)["ok"] is True
        with urllib.request.urlopen(f"{url}/_fake/messages", timeout=30) as reply:
            assert json.load(reply)[0]["text"] == "x"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
