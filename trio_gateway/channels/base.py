"""What every platform module is written against, and the `ChannelKind` record that describes
one platform to the rest of the gateway.

- `Outcome`: what a channel's answer means for a delivery (SPEC 7): ok, retry, permanent,
  rate-limited, or paused (the account must be fixed by a person first), with the pure helpers
  each platform's classifier is built from; the worker acts only on `Outcome`.
- `Channel`: one account's send adapter, as the delivery worker uses it.
- `AddressRule`: what an address on a platform looks like (SPEC 7), checked at enqueue.
- `AccountSpec`: one configured account being opened (its keys, its secrets, its transport).
- `ChannelKind`: everything the registry, the listener supervisor and the webhook route need
  from one platform. Each platform module (`feishu.py`, `weixin.py`, ...) exports its `KIND`;
  `registry.KINDS` lists them. Nothing here names a platform.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Literal, Protocol, TypeVar, runtime_checkable

import attrs

from trio_gateway.channels.inbound import BotSelf, Event, Listener, WebhookRequest, WebSocketConnect
from trio_gateway.channels.markdown import TextForm
from trio_gateway.errors import ConfigError, DeliveryValidationError
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.atomic import BlockingRunner
from trio_gateway.storage.home import Home
from trio_gateway.upstream import AsyncBaseTransport

# --- outcomes -----------------------------------------------------------------------------------

OutcomeKind = Literal["ok", "retry", "permanent", "rate_limited", "paused"]


@attrs.frozen
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    # Seconds the channel asked us to wait (Retry-After / retry_after), when it said.
    retry_after: float | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


OK = Outcome("ok")


# --- shared rules -----------------------------------------------------------------------------
#
# Every classifier takes what one HTTP exchange gave back: the status, the parsed JSON body
# (None when it was not JSON) and the headers. Header names may come in any case.

Headers = Mapping[str, str]

# Longest reason we keep: enough for the platform's code and message, short enough for a log line.
MAX_REASON_CHARS = 200


def header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def seconds(value: object) -> float | None:
    """A non-negative number of seconds from a header or JSON field, or None when it is not one.
    HTTP-date Retry-After values are not used by the platforms we speak, so they count as absent."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)  # an int of 400 digits from a platform overflows here
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def retry_after(headers: Headers) -> float | None:
    return seconds(header(headers, "Retry-After"))


def short(reason: str) -> str:
    flat = " ".join(reason.split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 1] + "…"


def field(body: object, name: str) -> object:
    return body.get(name) if isinstance(body, Mapping) else None


def by_status(status: int, headers: Headers, reason: str) -> Outcome:
    """What an HTTP status alone says, when the body named nothing more specific.

    401 means our credentials are bad: every message of that account would fail alike, so the
    account is paused for a person to fix instead of dead-lettering each message (SPEC 7 lists
    4xx as permanent; this is the one 4xx where that loses messages for nothing)."""
    if 200 <= status < 300:
        return Outcome("retry", reason, http_status=status)  # reached only for an unreadable 2xx
    if status == 429:
        return Outcome("rate_limited", reason, retry_after(headers), status)
    if status == 408:
        return Outcome("retry", reason, retry_after(headers), status)
    if status == 401:
        return Outcome("paused", reason, http_status=status)
    if 400 <= status < 500:
        return Outcome("permanent", reason, http_status=status)
    return Outcome("retry", reason, retry_after(headers), status)


def transport_error(kind: str, detail: str = "") -> Outcome:
    """A request that got no answer (connect refused, reset, timeout): always worth a retry."""
    return Outcome("retry", short(f"network error: {kind}" + (f": {detail}" if detail else "")))


def reason_prefix(status: int, channel: str, code: object, message: object) -> str:
    parts = [f"HTTP {status}"]
    if code not in (None, ""):
        parts.append(f"{channel}_code {code}")
    if isinstance(message, str) and message:
        parts.append(message)
    return short(" ".join(parts))


# A platform's pure reply rule: (status, parsed body, headers) -> Outcome.
Classifier = Callable[[int, object, Headers], Outcome]


# --- the send adapter ---------------------------------------------------------------------------


class Channel(Protocol):
    """One account of one channel, speaking its platform's real send API.

    `send` classifies every answer, network errors and timeouts included, into an `Outcome`;
    it raises only `trio.Cancelled` (a drain or the attempt's own deadline). It sends
    `entry.idempotency_key` where the platform accepts one (`deduplicates` says whether it does).
    """

    name: str
    deduplicates: bool

    async def send(self, entry: DeliveryEntry) -> Outcome: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ShowsTyping(Protocol):
    """An adapter that can show the platform's typing indicator (SPEC 15 "Typing"). One call
    shows it once (the platform lets it fade after a few seconds); the caller repeats it every
    `ChannelKind.typing_every` seconds, bounds each call and ignores what it answers."""

    async def show_typing(self, to: str, context_token: str | None) -> None: ...


# --- addresses (SPEC 7) --------------------------------------------------------------------------
#
# Checked at enqueue, so a mismatch is refused before anything is written: the seed's incident
# was a WeChat id (`...@im.wechat`) queued for Feishu, which answered `99992360 Invalid ids`
# twenty times.


@attrs.frozen
class AddressRule:
    pattern: re.Pattern[str]
    # What the rule says, in the words an operator reads in the error.
    says: str
    # Address suffixes that belong to other channels and are refused even when `pattern` matches.
    foreign_suffixes: tuple[str, ...] = ()


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _mismatch(channel: str, to: str, says: str) -> DeliveryValidationError:
    return DeliveryValidationError(f"channel={channel}, address={to}: the address must be {says}")


def check_address(channel: str, to: str | None, rule: AddressRule | None) -> str | None:
    """Raise `DeliveryValidationError` when `to` cannot be an address on `channel` by `rule`.

    Returns a warning for a channel with no rule (accepted, as SPEC 7 asks), else None.
    """
    if not to or not to.strip():
        raise _mismatch(channel, to or "", "non-empty")
    if _CONTROLS.search(to):
        # No platform id has one, and in a log line or console.jsonl reader a newline forges lines.
        raise _mismatch(channel, ascii(to), "free of control characters (newlines, escapes)")
    if rule is None:
        return f"channel={channel} has no address rule; address={to} accepted unchecked"
    if to.lower().endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):
        raise _mismatch(channel, to, rule.says)
    return None


def reply_thread(entry: DeliveryEntry, channel: str) -> str | None:
    """The platform thread a reply goes back into: its requester origin's (SPEC 15), when
    the entry goes to that same conversation."""
    origin = entry.requester_origin
    if origin is None or origin.thread is None or origin.channel != channel or origin.to != entry.to:
        return None
    return origin.thread


# --- an account's keys --------------------------------------------------------------------------

A = TypeVar("A", bound=AccountConfig)


def account_as(cls: type[A], account: AccountConfig) -> A:
    """The account as its kind's class (`ChannelKind.accounts`), which `config.parse` builds
    when told the kinds. One built otherwise (in code, or parsed without the kinds) has only the
    common keys: it is taken with the kind's own keys unset, as a file that omits them."""
    if isinstance(account, cls):
        return account
    return cls(**{field.name: getattr(account, field.name) for field in attrs.fields(AccountConfig)})


@attrs.frozen
class TokenAccount(AccountConfig):
    """An account of a platform that sends with one bot token, named by environment variable."""

    token_env: str | None = None


def require_base_url(path: str, account: AccountConfig) -> None:
    """The account rule of every platform with an HTTP API: where to send."""
    if not account.base_url:
        raise ConfigError(f"{path}.baseUrl", "required")


# The accounts of most platforms: `baseUrl` and a bot token.
TOKEN_ACCOUNTS = AccountKind(TokenAccount, require_base_url)


# --- one account being opened -------------------------------------------------------------------


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

    @property
    def token(self) -> str:
        """The bot token most platforms authenticate with (`tokenEnv`)."""
        return self.secret("tokenEnv", account_as(TokenAccount, self.account).token_env)


def check_token_account(spec: AccountSpec) -> None:
    """The account keys of a platform that sends with one bot token: `baseUrl` and `tokenEnv`."""
    _ = spec.base_url, spec.token


# --- the record of one platform -----------------------------------------------------------------

SenderOpener = Callable[[AccountSpec], Channel]
ListenerOpener = Callable[[AccountSpec, WebSocketConnect], Listener]


@attrs.frozen
class Webhook:
    """A platform's signed webhook (`POST /channels/{channel}/{accountId}/events`)."""

    # Everything that can refuse a request before its body is read (401): a configured secret,
    # a timestamp window, a signature header. The request's body is empty here.
    check_headers: Callable[[WebhookRequest], object]
    # The whole request: verify its signature (401), then read who wrote what (400 when malformed).
    parse: Callable[[WebhookRequest], Event]
    # Who the bot is, where `parse` needs it to read mentions (Telegram `getMe`): asked once
    # per account and kept (`registry.Identities`), handed to `parse` as `request.me`.
    whoami: Callable[[AccountSpec], Awaitable[BotSelf]] | None = None


def _never_listens(_: AccountConfig) -> str:
    return "off"


@attrs.frozen
class ChannelKind:
    """One platform, as the rest of the gateway sees it. The registry looks a kind up by the
    name `gateway.json` uses and asks it, so no module outside the platform's own branches on
    a platform's name."""

    # The name in `gateway.json` (`channels.<name>`), in origins and delivery entries.
    name: str
    address: AddressRule
    # What its accounts may say (`channels.<name>.accounts.<id>`) beyond the common keys, and
    # the rules `config` holds them to; secrets are `check_account`'s, with the environment.
    accounts: AccountKind = TOKEN_ACCOUNTS
    # The send API's reply rule (None: no HTTP replies, as `console`).
    classify: Classifier | None = None
    # One send adapter per configured account...
    open_sender: SenderOpener | None = None
    # ...or one adapter that needs no account at all (`console`): every account id reaches it.
    open_standalone: Callable[[Home, BlockingRunner], Channel] | None = None
    # The keys and secrets an account must have, checked before any client is opened.
    check_account: Callable[[AccountSpec], None] = check_token_account
    # The inbound mode an account gets when it names none, from the credentials it has.
    default_mode: Callable[[AccountConfig], str] = _never_listens
    # What this version can listen with, by inbound mode (`poll`, `socket`).
    listeners: Mapping[str, ListenerOpener] = attrs.field(factory=dict)
    webhook: Webhook | None = None
    # How a reply is sent (SPEC 15): its length limit as the platform counts it, and its
    # formatting. None: as written, any length (`console`).
    text: TextForm | None = None
    # How often its typing indicator is shown again while a turn runs; None: it has none.
    typing_every: float | None = None

    @property
    def needs_account(self) -> bool:
        return self.open_standalone is None
