"""The platforms this version speaks (`KINDS`), and what is built from them for one generation:
an adapter per configured account plus the standalone ones (`console`), a listener per account.
Built all at once, so a missing secret is a `ConfigError` before anything starts, never a
gateway that half-starts.

Every platform is looked up here by the name `gateway.json` uses and asked through its
`ChannelKind`: adding a platform is its module, one entry in `KINDS`, and its fake in `sim/`.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

import attrs
import trio

from trio_gateway.channels import console, discord, feishu, slack, telegram, weixin
from trio_gateway.channels.base import AccountSpec, Channel, ChannelKind
from trio_gateway.channels.base import check_address as check_by_rule
from trio_gateway.channels.http import make_transport, new_ssl_context
from trio_gateway.channels.inbound import UNKNOWN_BOT, BotSelf, Listener, WebSocketConnect, open_websocket
from trio_gateway.channels.listen import AccountListener, account_file_ok, agent_for
from trio_gateway.errors import ConfigError, DeliveryValidationError
from trio_gateway.log import EventLog
from trio_gateway.policy import config as cfg
from trio_gateway.policy.config import AccountConfig, AccountKind, ChannelConfig, Config
from trio_gateway.storage import config_file
from trio_gateway.storage.atomic import BlockingRunner
from trio_gateway.storage.home import Home
from trio_gateway.upstream import CHANNEL_BODY_BYTES, AsyncBaseTransport, bounded

KINDS: tuple[ChannelKind, ...] = (console.KIND, feishu.KIND, weixin.KIND, slack.KIND, discord.KIND, telegram.KIND)
BY_NAME: Mapping[str, ChannelKind] = {kind.name: kind for kind in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def kind_of(channel: str) -> ChannelKind | None:
    return BY_NAME.get(channel)


def account_kinds() -> Mapping[str, AccountKind]:
    """What each kind's accounts may say, by name, for `policy.config` (which names no kind):
    every reader of gateway.json hands these down."""
    return {kind.name: attrs.evolve(kind.accounts, standalone=not kind.needs_account) for kind in BY_NAME.values()}


# --- gateway.json's channel names (SPEC 3) -------------------------------------------------------


def check_names(config: Config) -> Config:
    """Refuse a `channels.<name>` this version cannot speak, and an account its kind refuses, in
    a config built without the kinds (policy is pure and sits below the channels: only the
    registry knows which kinds exist, and `policy.config.check` takes them from its caller)."""
    return cfg.check(config, account_kinds())


def load_config(path: Path) -> Config:
    """`gateway.json` as every reader takes it (start, restart, the CLI): the file's strict parse
    (`storage.config_file`), told the channel kinds this version speaks."""
    return config_file.load(path, account_kinds())


# --- addresses (SPEC 7) --------------------------------------------------------------------------


def check_address(channel: str, to: str | None) -> str | None:
    """Raise `DeliveryValidationError` when `to` cannot be an address on `channel`.

    Returns a warning for a channel with no rule (accepted, as SPEC 7 asks), else None.
    """
    kind = kind_of(channel)
    return check_by_rule(channel, to, kind.address if kind is not None else None)


def check_configured(channels: Mapping[str, ChannelConfig], channel: str, to: str, account_id: str | None) -> None:
    """An explicit delivery (`delivery create`, `POST /v1/deliveries`) must name a channel this
    gateway can send on: refused now, rather than dead-lettered a rescan later. A standalone
    channel (`console`) needs no account; any other channel needs the account (or, with none
    named, any account). An address that does not fit its channel is left to the outbox, which
    refuses it with its `[VALIDATION]` line (SPEC 8)."""
    try:
        check_address(channel, to)
    except DeliveryValidationError:
        return
    kind = kind_of(channel)
    if kind is not None and not kind.needs_account:
        return
    section = channels.get(channel)
    accounts = section.accounts if section is not None else {}
    if not accounts:
        raise DeliveryValidationError(
            f"channel={channel}: not configured on this gateway (add channels.{channel}.accounts.<id> to gateway.json)"
        )
    if account_id is not None and account_id not in accounts:
        raise DeliveryValidationError(
            f"channel={channel}, account={account_id}: no such account (configured: {', '.join(accounts)})"
        )


# --- accounts ------------------------------------------------------------------------------------


@attrs.frozen
class Opening:
    """One configured account of a platform that sends with accounts, being opened."""

    kind: ChannelKind
    spec: AccountSpec


def _openings(config: Config, env: Mapping[str, str], make: Callable[[], AsyncBaseTransport]) -> list[Opening]:
    return [
        Opening(kind, AccountSpec(channel, account_id, account, env, make))
        for channel, section in config.channels.items()
        if (kind := kind_of(channel)) is not None and kind.open_sender is not None
        for account_id, account in section.accounts.items()
    ]


def check(config: Config, env: Mapping[str, str]) -> None:
    """What `ChannelSet.build` would refuse, without opening anything: for start-up and for a
    restart's reloaded config, so a bad one is refused before the running one is let go."""
    check_names(config)
    _validate(_openings(config, env, _no_transport))


def _no_transport() -> AsyncBaseTransport:
    raise AssertionError("check() opens no client")


def _validate(openings: list[Opening]) -> None:
    """Every required key and secret of every account, checked before any client is opened."""
    for opening in openings:
        spec = opening.spec
        opening.kind.check_account(spec)


@attrs.define
class ChannelSet:
    """`get(channel, account_id)` for the delivery worker; `aclose()` when the generation ends."""

    # Adapters that need no account (`console`), by channel.
    standalone: dict[str, Channel] = attrs.Factory(dict)
    accounts: dict[str, dict[str, Channel]] = attrs.Factory(dict)

    @classmethod
    def build(
        cls,
        config: Config,
        home: Home,
        env: Mapping[str, str],
        transport: AsyncBaseTransport | None,
        runner: BlockingRunner,
    ) -> ChannelSet:
        """`transport` replaces the network for every account (an in-process fake in tests);
        `runner` runs the blocking file work of the standalone channels (the console file's
        appends: its own thread pool in production)."""
        openings = _openings(config, env, _transport_factory(transport))
        _validate(openings)
        channels = cls()
        for kind in KINDS:
            if kind.open_standalone is not None:
                channels.standalone[kind.name] = kind.open_standalone(home, runner)
        for opening in openings:
            assert opening.kind.open_sender is not None  # _openings keeps only those
            spec = opening.spec
            channels.accounts.setdefault(spec.channel, {})[spec.account_id] = opening.kind.open_sender(spec)
        return channels

    def get(self, channel: str, account_id: str | None) -> Channel | None:
        """The adapter for this account; with no account, the channel's first one. A standalone
        channel (`console`) has no accounts: any account id reaches it."""
        standalone = self.standalone.get(channel)
        if standalone is not None:
            return standalone
        accounts = self.accounts.get(channel, {})
        if account_id is None:
            return next(iter(accounts.values()), None)
        return accounts.get(account_id)

    def all(self) -> list[Channel]:
        return [*self.standalone.values(), *(c for accounts in self.accounts.values() for c in accounts.values())]

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
    # Every platform answer is capped (an endless long-poll body costs the cap, not the memory).
    if shared is not None:
        return lambda: bounded(shared, CHANNEL_BODY_BYTES)
    context: list[ssl.SSLContext] = []

    def real() -> AsyncBaseTransport:
        # One SSL context for all accounts: building it is the slow part of opening a client.
        if not context:
            context.append(new_ssl_context())
        return bounded(make_transport(context[0]), CHANNEL_BODY_BYTES)

    return real


# --- listening (SPEC 11) ---------------------------------------------------------------------


def _inbound_mode(channel: str, account: AccountConfig) -> str:
    """The account's `inbound.mode`, else its channel's default for the credentials it has."""
    if account.inbound.mode is not None:
        return account.inbound.mode
    kind = kind_of(channel)
    return kind.default_mode(account) if kind is not None else "off"


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
    for opening in _openings(config, env, _transport_factory(transport)):
        spec = opening.spec
        mode = _inbound_mode(spec.channel, spec.account)
        agent_id = agent_for(config.agents, spec.channel, spec.account_id)
        listener, why = _open_listener(opening, mode, agent_id, connect)
        if why is not None:
            log.warn("CHANNEL", f"Not listening channel={spec.channel} account={spec.account_id}: {why}")
        address = opening.kind.address
        accounts.append(
            AccountListener(spec.channel, spec.account_id, mode, agent_id, listener, address, account=spec.account)
        )
    return accounts


def _open_listener(
    opening: Opening, mode: str, agent_id: str | None, connect: WebSocketConnect
) -> tuple[Listener | None, str | None]:
    spec = opening.spec
    if mode in ("off", "webhook"):
        return None, None
    if agent_id is None:
        return None, "no agent is bound to this channel and account"
    if not account_file_ok(spec.account_id):
        return None, "the account id cannot name a cursor file"
    opener = opening.kind.listeners.get(mode)
    if opener is None:
        return None, f"inbound mode {mode!r} is not available for {spec.channel} in this version"
    try:
        return opener(spec, connect), None
    except ConfigError as exc:  # e.g. socket mode without appTokenEnv: the account still sends
        return None, str(exc)


# --- who the bot is, for webhooks (SPEC 15) --------------------------------------------------


@attrs.define
class Identities:
    """Who the bot is on each webhook account, where its platform's `parse` needs it to read
    mentions (Telegram `getMe`): asked at the first event and kept while the account's keys
    stay the same (a reload with another token asks again). Listeners ask for themselves."""

    env: Mapping[str, str]
    transport: AsyncBaseTransport | None = None
    known: dict[tuple[str, str], tuple[AccountConfig, BotSelf]] = attrs.Factory(dict)

    async def of(self, channel: str, account_id: str, account: AccountConfig) -> BotSelf:
        """Raises `ListenError` / `AuthFailed` when the platform would not say."""
        kind = kind_of(channel)
        whoami = kind.webhook.whoami if kind is not None and kind.webhook is not None else None
        if whoami is None:
            return UNKNOWN_BOT
        known = self.known.get((channel, account_id))
        if known is not None and known[0] == account:
            return known[1]
        me = await whoami(AccountSpec(channel, account_id, account, self.env, _transport_factory(self.transport)))
        self.known[(channel, account_id)] = (account, me)
        return me
