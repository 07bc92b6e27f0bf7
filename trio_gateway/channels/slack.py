"""Slack, all of it: the address rule; Web API `POST /chat.postMessage` and what its answers
mean. Slack takes no idempotency key, so a resend after a crash may show the message twice (the
worker logs it as a possible duplicate). Listening: Socket Mode (SPEC 11), with the app-level
token of `appTokenEnv`, else the signed Events API webhook. `KIND` describes it to the registry."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any

import attrs
import trio

from trio_gateway.channels.base import (
    OK,
    AccountSpec,
    AddressRule,
    ChannelKind,
    Headers,
    Outcome,
    TokenAccount,
    Webhook,
    account_as,
    by_status,
    check_token_account,
    field,
    reply_thread,
    require_base_url,
    retry_after,
    short,
)
from trio_gateway.channels.http import JsonClient, post_json
from trio_gateway.channels.inbound import (
    UNKNOWN_BOT,
    AuthFailed,
    BotSelf,
    Event,
    Heard,
    Intake,
    ListenError,
    WebhookRequest,
    WebSocketConnect,
    json_dict,
    message_event,
    socket_error,
)
from trio_gateway.channels.markdown import Style, TextForm, html_escape
from trio_gateway.errors import UnauthorizedError
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

SEND_PATH = "/chat.postMessage"
ADDRESS = AddressRule(re.compile(r"^[CUWGD][A-Z0-9]{8,}$"), "a Slack id matching ^[CUWGD][A-Z0-9]{8,}$")


PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_arguments",
        "invalid_blocks",
        "restricted_action",
        "cannot_dm_bot",
        "user_not_found",
        "messages_tab_disabled",
    }
)
# Credentials or scopes are wrong: the same for every message of the account, so pause it.
SEND_AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "missing_scope"}
)


def classify(status: int, body: object, headers: Headers) -> Outcome:
    """Slack answers HTTP 200 `{"ok": false, "error": "..."}` for almost every failure."""
    error = field(body, "error")
    reason = short(f"HTTP {status} slack_error {error}") if isinstance(error, str) else short(f"HTTP {status}")
    if field(body, "ok") is True and 200 <= status < 300:
        return OK
    if error == "ratelimited" or status == 429:
        return Outcome("rate_limited", reason, retry_after(headers), status)
    if error in PERMANENT_ERRORS:
        return Outcome("permanent", reason, http_status=status)
    if error in SEND_AUTH_ERRORS:
        return Outcome("paused", reason, http_status=status)
    if 200 <= status < 300:
        return Outcome("retry", reason, retry_after(headers), status)  # internal_error, fatal_error, unknown
    return by_status(status, headers, reason)


# --- how a reply is sent (SPEC 15): mrkdwn ------------------------------------------------------
# chat.postMessage's `text`: Slack truncates past 40,000 characters and asks clients to keep a
# message to 4,000 (https://api.slack.com/methods/chat.postMessage, "Truncating content";
# https://api.slack.com/changelog/2018-04-truncating-really-long-messages). We keep to 4,000.


def _link(text: str, url: str) -> str:
    if "|" in url or ">" in url:  # cannot be written inside <url|text>
        return f"{text} ({html_escape(url)})"
    return f"<{url}|{text}>" if text != html_escape(url) else f"<{url}>"


TEXT = TextForm(
    4000,
    "codepoints",
    Style(
        escape=html_escape,  # mrkdwn's three: & < >
        strong=("*", "*"),
        em=("_", "_"),
        strike=("~", "~"),
        heading=("*", "*"),
        code=lambda code: f"`{code}`",
        fence=lambda _language, code: f"```\n{code.rstrip()}\n```",
        link=_link,
    ),
)


@attrs.define
class SlackChannel:
    http: JsonClient
    name: str = "slack"
    deduplicates: bool = False

    @classmethod
    def open(cls, base_url: str, token: str, transport: AsyncBaseTransport) -> SlackChannel:
        headers = {"Authorization": f"Bearer {token}"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[token]))

    async def send(self, entry: DeliveryEntry) -> Outcome:
        body = {"channel": entry.to, "text": TEXT.render(entry.payload.text)}  # mrkdwn is the default
        thread = reply_thread(entry, self.name)
        if thread is not None:  # the message was in a thread: the reply goes into it
            body["thread_ts"] = thread
        return await self.http.send(SEND_PATH, body, classify)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening (SPEC 11): Socket Mode ----------------------------------------------------------

CONNECT_PATH = "/apps.connections.open"
AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "not_allowed_token_type")


# A subtype still written by a person: a message with a file (its text, if any, is read).
_PERSON_SUBTYPES = frozenset({"file_share"})


def heard(payload: object, me: BotSelf = UNKNOWN_BOT) -> Heard | None:
    """An Events API `message` or `app_mention` from a person, or None: the one reading for
    Socket Mode and the webhook alike. Not a turn: bot messages (our own replies come back as
    those, and answering them would loop), edits and other subtypes. The bot's user id comes
    with the event (`authorizations`), else `me`; `<@BOT>` or an `app_mention` addresses it,
    and the mention is taken out of the text. Both events of one message (`message` and
    `app_mention`) carry the same id, channel and `ts`, so the second is a duplicate."""
    if not isinstance(payload, dict):
        return None
    event = json_dict(payload.get("event"))
    kind, subtype = event.get("type"), event.get("subtype")
    if kind not in ("message", "app_mention") or event.get("bot_id") or (subtype and subtype not in _PERSON_SUBTYPES):
        return None
    channel, text, ts, user = event.get("channel"), event.get("text") or "", event.get("ts"), event.get("user")
    bot = _bot_user(payload) or me.user_id
    if not isinstance(channel, str) or not channel or not isinstance(text, str) or not ts or user == bot:
        return None
    media = not text.strip() and bool(event.get("files"))
    if not text.strip() and not media:
        return None
    mention = re.compile(rf"<@{re.escape(bot)}(?:\|[^>]*)?>") if bot else None
    addressed = kind == "app_mention" or (mention is not None and mention.search(text) is not None)
    if mention is not None:
        text = " ".join(mention.sub(" ", text).split())
    direct = event.get("channel_type") == "im" or (kind == "message" and channel.startswith("D"))
    thread = event.get("thread_ts")
    return Heard(
        f"{channel}:{ts}",
        channel,
        text,
        sender=user if isinstance(user, str) else None,
        chat="direct" if direct else "group",
        addressed=addressed,
        thread=thread if isinstance(thread, str) and thread else None,
        media=media,
    )


def _bot_user(payload: dict[str, Any]) -> str | None:
    """The bot's own user id, as the Events API names it in each event's `authorizations`."""
    for grant in payload.get("authorizations") or []:
        user = json_dict(grant).get("user_id")
        if json_dict(grant).get("is_bot") and isinstance(user, str):
            return user
    return None


@attrs.define
class SlackSocketListener:
    """`apps.connections.open` with the app-level token for a `wss://` URL; each envelope is
    acknowledged only after its message is a durable turn (Slack redelivers an unacknowledged
    one, and the event id makes the redelivery a no-op); `disconnect` envelopes reconnect."""

    http: JsonClient
    account_id: str
    connect: WebSocketConnect
    channel: str = "slack"

    @classmethod
    def open(
        cls, base_url: str, app_token: str, account_id: str, transport: AsyncBaseTransport, connect: WebSocketConnect
    ) -> SlackSocketListener:
        headers = {"Authorization": f"Bearer {app_token}"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[app_token]), account_id, connect)

    async def _url(self) -> str:
        # A form, as slack_sdk sends it: Slack's Web API takes its arguments form-encoded
        # (https://api.slack.com/web#posting_json lists the methods that also take JSON).
        reply = await post_json(self.http, CONNECT_PATH, {}, read_seconds=20.0, form=True)
        error = reply.get("error") if isinstance(reply, dict) else None
        if error in AUTH_ERRORS:
            raise AuthFailed(f"apps.connections.open: {error}")
        url = reply.get("url") if isinstance(reply, dict) else None
        if not isinstance(url, str) or not reply.get("ok"):
            raise ListenError(f"apps.connections.open: {error or 'no url'}")
        return url

    async def listen(self, intake: Intake) -> None:
        url = await self._url()
        try:
            async with self.connect(url) as ws:
                while True:
                    await self._envelope(ws, await ws.get_message(), intake)
        except Exception as exc:  # cancellation is not an Exception: it passes untouched
            raise socket_error(exc, "Socket Mode connection") from None

    async def _envelope(self, ws: Any, raw: str | bytes, intake: Intake) -> None:
        try:
            envelope = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ListenError("Socket Mode sent a frame that is not JSON") from None
        kind = envelope.get("type") if isinstance(envelope, dict) else None
        if kind == "hello":
            intake.connected()
        elif kind == "disconnect":
            raise ListenError(f"Slack asked us to reconnect ({envelope.get('reason')})")
        elif kind == "events_api":
            found = heard(envelope.get("payload"))
            if found is not None:
                await intake.accept(found)
        ident = envelope.get("envelope_id") if isinstance(envelope, dict) else None
        if isinstance(ident, str):
            await ws.send_message(json.dumps({"envelope_id": ident}))  # after acceptance, never before

    async def stop(self) -> None:
        # The websocket was closed (close frame, bounded) when the listener's scope exited.
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the Events API webhook (SPEC 5): signed with the app's signing secret ---------------------


@attrs.frozen
class SlackAccount(TokenAccount):
    """A Slack app: its bot token; the Events API's signing secret; Socket Mode's app-level
    token (SPEC 5, 11). Secrets are named by environment variable."""

    signing_secret_env: str | None = None
    app_token_env: str | None = None


def _keys(account: AccountConfig) -> SlackAccount:
    return account_as(SlackAccount, account)


# Slack rejects signatures older than this to stop replays; so do we.
REPLAY_WINDOW_SECONDS = 300.0


def check_webhook_headers(request: WebhookRequest) -> tuple[str, str, str]:
    """What can be checked before the body arrives: a signing secret, a timestamp inside the
    replay window, a signature header. Returns (secret, timestamp, signature)."""
    secret = request.secret(_keys(request.account).signing_secret_env, "signingSecretEnv")
    stamp = request.headers.get("x-slack-request-timestamp", "")
    given = request.headers.get("x-slack-signature", "")
    # Whole seconds, as Slack sends them: `float()` would take "nan", whose age compares
    # false with everything and so passed the window check.
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise UnauthorizedError("missing or bad X-Slack-Request-Timestamp (whole Unix seconds)")
    if abs(request.wall_time() - int(stamp)) > REPLAY_WINDOW_SECONDS:
        raise UnauthorizedError("X-Slack-Request-Timestamp is outside the 5-minute window")
    if not given.startswith("v0="):
        raise UnauthorizedError("missing or bad X-Slack-Signature")
    return secret, stamp, given


def verify_signature(request: WebhookRequest) -> None:
    """Slack's v0 scheme: HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret."""
    secret, stamp, given = check_webhook_headers(request)
    signed = b"v0:" + stamp.encode() + b":" + request.body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.encode(), f"v0={digest}".encode()):
        raise UnauthorizedError("bad X-Slack-Signature")


def parse_webhook(request: WebhookRequest) -> Event:
    verify_signature(request)
    data = request.json()
    if data.get("type") == "url_verification":
        return Event(challenge=str(data.get("challenge", "")))
    return message_event(heard(data, request.me), f"slack event {json_dict(data.get('event')).get('type')!r}")


# --- the record the registry lists -------------------------------------------------------------


def _open_sender(a: AccountSpec) -> SlackChannel:
    return SlackChannel.open(a.base_url, a.token, a.transport())


def _open_listener(a: AccountSpec, connect: WebSocketConnect) -> SlackSocketListener:
    app_token = a.secret("appTokenEnv", _keys(a.account).app_token_env)
    return SlackSocketListener.open(a.base_url, app_token, a.account_id, a.transport(), connect)


def _check_account(a: AccountSpec) -> None:
    """The bot token's keys; an app-level token, when named, must be set (Socket Mode)."""
    check_token_account(a)
    app_token_env = _keys(a.account).app_token_env
    if app_token_env:
        a.secret("appTokenEnv", app_token_env)


def _default_mode(account: AccountConfig) -> str:
    return "socket" if _keys(account).app_token_env else "webhook"


KIND = ChannelKind(
    name="slack",
    address=ADDRESS,
    accounts=AccountKind(SlackAccount, require_base_url),
    check_account=_check_account,
    classify=classify,
    open_sender=_open_sender,
    default_mode=_default_mode,
    listeners={"socket": _open_listener},
    webhook=Webhook(check_webhook_headers, parse_webhook),
    text=TEXT,
)
