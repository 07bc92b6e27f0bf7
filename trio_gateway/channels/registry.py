"""The channels of one generation: an adapter per configured account, plus `console`, built
from the config, the home and the environment. Built all at once, so a missing secret is a
`ConfigError` before anything starts, never a gateway that half-starts."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping

import attrs
import trio

from trio_gateway.channels.base import Channel
from trio_gateway.channels.console import ConsoleChannel
from trio_gateway.channels.discord import DiscordChannel, DiscordListener
from trio_gateway.channels.feishu import FeishuChannel, FeishuListener
from trio_gateway.channels.http import make_transport, new_ssl_context
from trio_gateway.channels.listen import (
    AccountListener,
    Listener,
    WebSocketConnect,
    account_file_ok,
    agent_for,
    open_websocket,
)
from trio_gateway.channels.slack import SlackChannel, SlackSocketListener
from trio_gateway.channels.telegram import TelegramChannel, TelegramListener
from trio_gateway.channels.weixin import WeixinChannel, WeixinListener
from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import AccountConfig, Config
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.home import Home
from trio_gateway.upstream import AsyncBaseTransport


@attrs.frozen
class AccountSpec:
    """One account being opened: what it says, where it sits in the file, and the environment."""

    channel: str
    account_id: str
    account: AccountConfig
    env: Mapping[str, str]
    transport: Callable[[], AsyncBaseTransport]

    @property
    def path(self) -> str:
        return f"channels.{self.channel}.accounts.{self.account_id}"

    @property
    def base_url(self) -> str:
        url = self.required("baseUrl", self.account.base_url)
        if not url.startswith(("http://", "https://")):
            # Caught here, not as a retry on every send: no attempt could ever succeed.
            raise ConfigError(f"{self.path}.baseUrl", f"must be an http(s) URL, got {url!r}")
        return url

    def required(self, key: str, value: str | None) -> str:
        if not value:
            raise ConfigError(f"{self.path}.{key}", "required")
        return value

    def secret(self, key: str, env_name: str | None) -> str:
        name = self.required(key, env_name)
        value = self.env.get(name)
        if not value:
            raise ConfigError(f"{self.path}.{key}", f"environment variable {name} is not set")
        return value


def _feishu(a: AccountSpec) -> Channel:
    app_id = a.required("appId", a.account.app_id)
    return FeishuChannel.open(a.base_url, app_id, a.secret("appSecretEnv", a.account.app_secret_env), a.transport())


def _weixin(a: AccountSpec) -> Channel:
    token = a.secret("tokenEnv", a.account.token_env)
    return WeixinChannel.open(a.base_url, token, a.account.context_token, a.transport())


def _slack(a: AccountSpec) -> Channel:
    return SlackChannel.open(a.base_url, a.secret("tokenEnv", a.account.token_env), a.transport())


def _discord(a: AccountSpec) -> Channel:
    return DiscordChannel.open(a.base_url, a.secret("tokenEnv", a.account.token_env), a.transport())


def _telegram(a: AccountSpec) -> Channel:
    return TelegramChannel.open(a.base_url, a.secret("tokenEnv", a.account.token_env), a.transport())


OPENERS: dict[str, Callable[[AccountSpec], Channel]] = {
    "feishu": _feishu,
    "openclaw-weixin": _weixin,
    "slack": _slack,
    "discord": _discord,
    "telegram": _telegram,
}


# --- listening (SPEC 11) ---------------------------------------------------------------------


def _weixin_listener(a: AccountSpec, _: WebSocketConnect) -> Listener:
    return WeixinListener.open(a.base_url, a.secret("tokenEnv", a.account.token_env), a.account_id, a.transport())


def _telegram_listener(a: AccountSpec, _: WebSocketConnect) -> Listener:
    return TelegramListener.open(a.base_url, a.secret("tokenEnv", a.account.token_env), a.account_id, a.transport())


def _discord_listener(a: AccountSpec, connect: WebSocketConnect) -> Listener:
    token = a.secret("tokenEnv", a.account.token_env)
    return DiscordListener.open(a.base_url, token, a.account_id, a.transport(), connect)


def _slack_listener(a: AccountSpec, connect: WebSocketConnect) -> Listener:
    app_token = a.secret("appTokenEnv", a.account.app_token_env)
    return SlackSocketListener.open(a.base_url, app_token, a.account_id, a.transport(), connect)


def _feishu_listener(a: AccountSpec, connect: WebSocketConnect) -> Listener:
    app_id = a.required("appId", a.account.app_id)
    secret = a.secret("appSecretEnv", a.account.app_secret_env)
    return FeishuListener.open(a.base_url, app_id, secret, a.account_id, a.transport(), connect)


# (channel, mode) -> opener: what this version can listen with.
LISTENERS: dict[tuple[str, str], Callable[[AccountSpec, WebSocketConnect], Listener]] = {
    ("openclaw-weixin", "poll"): _weixin_listener,
    ("telegram", "poll"): _telegram_listener,
    ("discord", "socket"): _discord_listener,
    ("slack", "socket"): _slack_listener,
    ("feishu", "socket"): _feishu_listener,
}


def inbound_mode(channel: str, account: AccountConfig) -> str:
    """The account's `inbound.mode`, else its channel's default for the credentials it has."""
    if account.inbound.mode is not None:
        return account.inbound.mode
    if channel == "telegram":
        # Telegram refuses getUpdates while a webhook is set: a secret token means a webhook.
        return "webhook" if account.secret_token_env else "poll"
    if channel == "slack":
        return "socket" if account.app_token_env else "webhook"
    return {"openclaw-weixin": "poll", "discord": "socket", "feishu": "socket"}.get(channel, "off")


def build_listeners(
    config: Config,
    env: Mapping[str, str],
    log: EventLog,
    transport: AsyncBaseTransport | None = None,
    connect: WebSocketConnect = open_websocket,
) -> list[AccountListener]:
    """One `AccountListener` per configured account; those that cannot listen are `off`, each
    with one warning saying why."""
    accounts = []
    for spec in _specs(config, env, _transport_factory(transport)):
        mode = inbound_mode(spec.channel, spec.account)
        agent_id = agent_for(config.agents, spec.channel, spec.account_id)
        listener, why = _open_listener(spec, mode, agent_id, connect)
        if why is not None:
            log.warn("CHANNEL", f"Not listening channel={spec.channel} account={spec.account_id}: {why}")
        accounts.append(AccountListener(spec.channel, spec.account_id, mode, agent_id, listener))
    return accounts


def _open_listener(
    spec: AccountSpec, mode: str, agent_id: str | None, connect: WebSocketConnect
) -> tuple[Listener | None, str | None]:
    if mode in ("off", "webhook"):
        return None, None
    if agent_id is None:
        return None, "no agent is bound to this channel and account"
    if not account_file_ok(spec.account_id):
        return None, "the account id cannot name a cursor file"
    opener = LISTENERS.get((spec.channel, mode))
    if opener is None:
        return None, f"inbound mode {mode!r} is not available for {spec.channel} in this version"
    try:
        return opener(spec, connect), None
    except ConfigError as exc:  # e.g. socket mode without appTokenEnv: the account still sends
        return None, str(exc)


def _specs(config: Config, env: Mapping[str, str], make: Callable[[], AsyncBaseTransport]) -> list[AccountSpec]:
    return [
        AccountSpec(channel, account_id, account, env, make)
        for channel, section in config.channels.items()
        if channel in OPENERS
        for account_id, account in section.accounts.items()
    ]


def check(config: Config, env: Mapping[str, str]) -> None:
    """What `ChannelSet.build` would refuse, without opening anything: for start-up and for a
    restart's reloaded config, so a bad one is refused before the running one is let go."""
    _validate(_specs(config, env, _no_transport))


def _no_transport() -> AsyncBaseTransport:
    raise AssertionError("check() opens no client")


def _validate(specs: list[AccountSpec]) -> None:
    """Every required key and secret of every account, checked before any client is opened."""
    for spec in specs:
        _ = spec.base_url
        if spec.channel == "feishu":
            spec.required("appId", spec.account.app_id)
            spec.secret("appSecretEnv", spec.account.app_secret_env)
        else:
            spec.secret("tokenEnv", spec.account.token_env)
        if spec.account.app_token_env:
            spec.secret("appTokenEnv", spec.account.app_token_env)


@attrs.define
class ChannelSet:
    """`get(channel, account_id)` for the delivery worker; `aclose()` when the generation ends."""

    console: ConsoleChannel
    accounts: dict[str, dict[str, Channel]] = attrs.Factory(dict)

    @classmethod
    def build(
        cls,
        config: Config,
        home: Home,
        env: Mapping[str, str],
        transport: AsyncBaseTransport | None = None,
        console_runner: BlockingRunner = in_thread,
    ) -> ChannelSet:
        """`transport` replaces the network for every account (an in-process fake in tests);
        `console_runner` runs the console file's appends (its own thread pool in production)."""
        specs = _specs(config, env, _transport_factory(transport))
        _validate(specs)
        channels = cls(ConsoleChannel(home.console_path, console_runner))
        for spec in specs:
            channels.accounts.setdefault(spec.channel, {})[spec.account_id] = OPENERS[spec.channel](spec)
        return channels

    @classmethod
    def from_config(cls, config: Config, home: Home, env: Mapping[str, str]) -> ChannelSet:
        # The name `delivery process --once` (cli/delivery.py) calls; same as `build` without a fake.
        return cls.build(config, home, env)

    def get(self, channel: str, account_id: str | None) -> Channel | None:
        """The adapter for this account; with no account, the channel's first one. `console`
        has no accounts: any account id reaches it."""
        if channel == "console":
            return self.console
        accounts = self.accounts.get(channel, {})
        if account_id is None:
            return next(iter(accounts.values()), None)
        return accounts.get(account_id)

    def all(self) -> list[Channel]:
        return [self.console, *(c for accounts in self.accounts.values() for c in accounts.values())]

    async def aclose(self) -> None:
        """Closes every client, each even when another fails; the caller bounds the time."""
        async with trio.open_nursery() as nursery:
            for channel in self.all():
                nursery.start_soon(_close_quietly, channel)


async def _close_quietly(channel: Channel) -> None:
    # One adapter failing to close must not stop the others from closing.
    with contextlib.suppress(Exception):
        await channel.aclose()


def _transport_factory(shared: AsyncBaseTransport | None) -> Callable[[], AsyncBaseTransport]:
    if shared is not None:
        return lambda: shared
    context: list[ssl.SSLContext] = []

    def real() -> AsyncBaseTransport:
        # One SSL context for all accounts: building it is the slow part of opening a client.
        if not context:
            context.append(new_ssl_context())
        return make_transport(context[0])

    return real
