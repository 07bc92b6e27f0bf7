"""What comes in from a platform, in the words every platform module and the listener supervisor
share (SPEC 11): a message heard by a listener (`Heard`, `Intake`, `Listener`, the two ways a
connection ends), the websocket helpers the socket listeners share, and what a webhook request
is and yields (`WebhookRequest` → `Event`). No platform knowledge: that lives in each platform's
module, reached through its `ChannelKind` (`channels/base.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import attrs

from trio_gateway.errors import UnauthorizedError, leaves, note_others
from trio_gateway.policy.config import AccountConfig


class ListenError(Exception):
    """The connection failed or closed: reconnect after a backoff."""


class AuthFailed(Exception):
    """The platform refused our credentials (401/403, WeChat errcode -14): pause the account."""


ChatKind = Literal["direct", "group"]


@attrs.frozen
class Heard:
    """One message from a person, as the gateway needs it: what the platform's module read
    from it, the same whether it came by webhook, poll or socket (SPEC 11, 15)."""

    # The platform's id for it, unique per account: the dedupe key. None: the platform gave
    # none (a webhook event without an id), so a repeat of it cannot be recognised.
    id: str | None
    to: str  # where the reply goes: the person in a direct chat, the group in a group
    text: str  # the prompt: a caption counts as text; a mention of the bot is taken out
    context_token: str | None = None
    # Who wrote it: the platform's user id, as SPEC 15 lists it (None: the platform said not).
    sender: str | None = None
    chat: ChatKind = "direct"
    # It mentions the bot or replies to one of the bot's messages (groups need it).
    addressed: bool = False
    # The platform's thread the message sits in (Slack `thread_ts`, Telegram
    # `message_thread_id`): the reply goes back into it.
    thread: str | None = None
    # It carried something other than text (an image, a voice note, a sticker) and no text.
    media: bool = False


@attrs.frozen
class BotSelf:
    """Who the bot is on one account, to tell whether a message addresses it: its user id and,
    where mentions name it so (Telegram), its username. Unknown parts are None."""

    user_id: str | None = None
    username: str | None = None


# Nothing known about the bot: no message can be read as addressing it.
UNKNOWN_BOT = BotSelf()


class Intake(Protocol):
    """What a listener talks to: hand over messages, keep its cursor."""

    async def accept(self, heard: Heard) -> None:
        """Returns once the message is a durable turn (or known already). Never raises for a
        bad message; raises `ListenError` when the gateway is not accepting work."""

    async def accept_batch(self, batch: list[Heard]) -> None:
        """`accept` for one poll's messages: returns once every one is a durable turn."""

    async def load_cursor(self) -> Any: ...

    async def save_cursor(self, cursor: Any) -> None: ...

    def connected(self) -> None:
        """The platform answered: state `listening`, the backoff starts over."""


class Listener(Protocol):
    channel: str
    account_id: str

    async def listen(self, intake: Intake) -> None:
        """Until cancelled; raises `ListenError` or `AuthFailed`."""

    async def stop(self) -> None:
        """The platform's own stop call (WeChat `notifystop`, a close frame); bounded by the caller."""

    async def aclose(self) -> None: ...


# --- websockets the socket listeners share ------------------------------------------------------

WebSocketConnect = Callable[[str], AbstractAsyncContextManager[Any]]
DISCONNECT_SECONDS = 5.0


# trio-websocket is imported where a socket is used, not at the top: the address rules and
# classifiers in the platform modules are read by light commands (`delivery list`), which never
# open a socket and should not pay for importing one.


def open_websocket(url: str) -> AbstractAsyncContextManager[Any]:
    """Production: trio-websocket, with its closing handshake bounded."""
    import trio_websocket

    return trio_websocket.open_websocket_url(url, disconnect_timeout=DISCONNECT_SECONDS)


def leaf_errors(exc: BaseException) -> list[BaseException]:
    """The errors inside `exc`, however deep trio's ExceptionGroups nest them."""
    return leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]


def socket_error(exc: Exception, what: str) -> Exception:
    """The one error the supervisor understands, from what a socket listener's connection and
    nursery raised (trio wraps a child task's error in an ExceptionGroup). One, because the
    supervisor decides by it (pause or reconnect); any other is named in its notes."""
    import trio_websocket

    raised = list(leaf_errors(exc))
    for leaf in raised:
        if isinstance(leaf, (AuthFailed, ListenError)):
            return beside(leaf, leaf, raised)
        if isinstance(leaf, trio_websocket.ConnectionClosed):
            code = leaf.reason.code if leaf.reason else None
            return beside(ListenError(f"{what} closed (code {code})"), leaf, raised)
        if isinstance(leaf, (trio_websocket.HandshakeError, OSError, ValueError)):
            return beside(ListenError(f"{what}: {type(leaf).__name__}: {leaf}"), leaf, raised)
    return exc


def beside(error: Exception, chosen: BaseException, raised: list[BaseException]) -> Exception:
    """`error` (made from `chosen`), naming in its notes every other error raised with it."""
    note_others(error, [leaf for leaf in raised if leaf is not chosen])
    return error


# --- webhooks (`POST /channels/{channel}/{accountId}/events`) -----------------------------------

JsonObject = dict[str, Any]


@attrs.frozen
class WebhookRequest:
    """One webhook request as the HTTP route hands it to the platform: before the body is read
    (`body` empty, for the header checks) and after. `read_json` is the route's own strict JSON
    reader, so a bad body is refused with the same 400 as any other."""

    headers: Mapping[str, str]
    body: bytes
    account: AccountConfig
    env: Mapping[str, str]
    wall_time: Callable[[], float]
    read_json: Callable[[bytes], JsonObject]
    # Who the bot is on this account, when the platform's module needs it to read mentions.
    me: BotSelf = UNKNOWN_BOT

    def json(self) -> JsonObject:
        return self.read_json(self.body)

    def secret(self, env_name: str | None, what: str) -> str:
        """The webhook secret the account names (`what` is its key, for the error)."""
        secret = self.env.get(env_name) if env_name else None
        if not secret:
            # The account cannot verify anything, so it accepts nothing.
            raise UnauthorizedError(f"{what} is not configured for this account; inbound events are refused")
        return secret


@attrs.frozen
class Event:
    # A message from a person, read as the listener reads it (the platform's one `heard`).
    message: Heard | None = None
    challenge: str | None = None
    ignored: str | None = None


def json_dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def event_id(value: object) -> str | None:
    """The platform's id for an event as a string (Slack `event_id`, Telegram `update_id`):
    a retried delivery carries the same one and is not a second turn."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
        return str(value)
    return None


def message_event(found: Heard | None, what: str) -> Event:
    """The `Event` for a webhook's message: the turn-to-be, or ignored (a bot, an edit, a
    service message: the same verdict the listener reaches on the same message)."""
    return Event(message=found) if found is not None else Event(ignored=f"{what}: not a message from a person")
