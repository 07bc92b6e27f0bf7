"""openclaw-weixin (WeChat iLink bot), all of it: the address rule; `POST /ilink/bot/sendmessage`
and what its answers mean; listening by long poll (`POST /ilink/bot/getupdates` with the
`get_updates_buf` cursor, SPEC 11). `KIND` describes it to the registry.

A reply must carry the `context_token` of the message it answers: the token belongs to the
conversation and changes with each message, so it travels in the turn's origin (and through
subagents into the delivery entry's `requesterOrigin`), never in the account's settings. The
account's static `contextToken` is only a fallback for entries with none (manual sends).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from trio_gateway.channels.base import (
    OK,
    AccountSpec,
    AddressRule,
    ChannelKind,
    Headers,
    Outcome,
    TokenAccount,
    account_as,
    by_status,
    field,
    reason_prefix,
    require_base_url,
)
from trio_gateway.channels.http import JsonClient, post_json
from trio_gateway.channels.inbound import AuthFailed, Heard, Intake, ListenError, WebSocketConnect
from trio_gateway.channels.markdown import PLAIN, TextForm
from trio_gateway.policy.config import AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

CHANNEL = "openclaw-weixin"
SEND_PATH = "/ilink/bot/sendmessage"
POLL_PATH = "/ilink/bot/getupdates"
NOTIFY_START_PATH = "/ilink/bot/msg/notifystart"
NOTIFY_STOP_PATH = "/ilink/bot/msg/notifystop"
CONFIG_PATH = "/ilink/bot/getconfig"
TYPING_PATH = "/ilink/bot/sendtyping"
TYPING_ON = 1
CHANNEL_VERSION = "trio-gateway/0.1"
MESSAGE_TYPE_USER = 1
MESSAGE_TYPE_BOT = 2
MESSAGE_STATE_FINISH = 2
ITEM_TYPE_TEXT = 1
ERRCODE_SESSION_EXPIRED = -14
# The server says how long it holds a poll (`longpolling_timeout_ms`, 35 s by default); our read
# timeout is that plus a margin, so an idle poll ends on the server's side, not ours.
DEFAULT_POLL_SECONDS = 35.0
READ_MARGIN_SECONDS = 10.0

ADDRESS = AddressRule(re.compile(r"^[A-Za-z0-9_.-]+@im\.wechat$"), "a WeChat user id ending in @im.wechat")


def classify(status: int, body: object, headers: Headers) -> Outcome:
    """`{"ret": 0}` is success; `{"errcode": -14}` means the bot's session expired (a person must
    log in again), so the account is paused rather than each message failed."""
    errcode = field(body, "errcode")
    ret = field(body, "ret")
    code = errcode if errcode not in (None, 0) else ret
    reason = reason_prefix(status, "weixin", code, field(body, "errmsg"))
    if 200 <= status < 300 and isinstance(body, Mapping) and code in (None, 0):
        return OK
    if code == ERRCODE_SESSION_EXPIRED:
        return Outcome("paused", reason, http_status=status)
    if 200 <= status < 300 and isinstance(code, int):
        return Outcome("retry", reason, http_status=status)
    return by_status(status, headers, reason)


def _headers_for(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "AuthorizationType": "ilink_bot_token"}


def _reply_context(entry: DeliveryEntry, fallback: str | None) -> str | None:
    """The context token of the conversation this entry answers, when it answers one here."""
    origin = entry.requester_origin
    if origin is not None and origin.context_token and origin.channel in (None, CHANNEL):
        return origin.context_token
    return fallback


# How a reply is sent (SPEC 15): WeChat shows text as it is, so Markdown goes as plain text. The
# iLink bot API documents no length limit; 2,000 characters is a conservative figure (README).
TEXT = TextForm(2000, "codepoints", PLAIN)


def message_body(entry: DeliveryEntry, context_token: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "to_user_id": entry.to,
        "client_id": entry.idempotency_key,
        "message_type": MESSAGE_TYPE_BOT,
        "message_state": MESSAGE_STATE_FINISH,
        "item_list": [{"type": ITEM_TYPE_TEXT, "text_item": {"text": TEXT.render(entry.payload.text)}}],
    }
    if context_token:
        msg["context_token"] = context_token
    return {"msg": msg}


@attrs.define
class WeixinChannel:
    http: JsonClient
    context_token: str | None = None
    typing_tickets: dict[str, str] = attrs.Factory(dict)
    name: str = CHANNEL
    deduplicates: bool = True

    @classmethod
    def open(cls, base_url: str, token: str, context_token: str | None, transport: AsyncBaseTransport) -> WeixinChannel:
        return cls(JsonClient.open(base_url, transport, headers=_headers_for(token), secrets=[token]), context_token)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        body = message_body(entry, _reply_context(entry, self.context_token))
        return await self.http.send(SEND_PATH, body, classify)

    async def show_typing(self, to: str, context_token: str | None) -> None:
        """`sendtyping` needs a ticket `getconfig` hands out per user: asked once, kept."""
        ticket = self.typing_tickets.get(to)
        if ticket is None:
            token = context_token or self.context_token
            reply = await self.http.post(CONFIG_PATH, {"ilink_user_id": to, "context_token": token})
            found = field(reply.body, "typing_ticket") if not isinstance(reply, Outcome) else None
            if not isinstance(found, str) or not found:
                return
            ticket = self.typing_tickets[to] = found
        await self.http.post(TYPING_PATH, {"ilink_user_id": to, "typing_ticket": ticket, "status": TYPING_ON})

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening ---------------------------------------------------------------------------------


def heard(msg: object) -> Heard | None:
    """A message from a person, or None (bots, our own replies, junk). Without text (an image,
    a voice note, a file) it is `media`. The ilink bot API speaks to one person at a time: a
    message naming a `group_id` is a group message, which the API gives no way to tell
    addressed to the bot, so `mention` groups never take it (SPEC 15; `groupPolicy: open`
    answers it, to the group when its id is an address, else to the sender)."""
    if not isinstance(msg, dict) or msg.get("message_type") != MESSAGE_TYPE_USER:
        return None
    sender = msg.get("from_user_id")
    items = [item for item in msg.get("item_list") or [] if isinstance(item, dict)]
    texts = [
        item["text_item"].get("text")
        for item in items
        if item.get("type") == ITEM_TYPE_TEXT and isinstance(item.get("text_item"), dict)
    ]
    text = "\n".join(t for t in texts if isinstance(t, str) and t.strip())
    media = not text and any(item.get("type") != ITEM_TYPE_TEXT for item in items)
    ident = msg.get("message_id") or msg.get("seq") or msg.get("client_id")
    if not isinstance(sender, str) or not sender or not (text or media) or ident is None:
        return None
    token = msg.get("context_token")
    group = msg.get("group_id")
    group = group if isinstance(group, str) and group else None
    to = group if group is not None and ADDRESS.pattern.fullmatch(group) else sender
    return Heard(
        str(ident),
        to,
        text,
        token if isinstance(token, str) and token else None,
        sender=sender,
        chat="group" if group is not None else "direct",
        media=media,
    )


def _check(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise ListenError("getupdates answer is not a JSON object")
    code = reply.get("errcode") or reply.get("ret") or 0
    if code == ERRCODE_SESSION_EXPIRED:
        raise AuthFailed(f"errcode {ERRCODE_SESSION_EXPIRED}: {reply.get('errmsg') or 'session expired'}")
    if code != 0:
        raise ListenError(f"errcode {code}: {reply.get('errmsg') or ''}".strip())
    return reply


@attrs.define
class WeixinListener:
    http: JsonClient
    account_id: str
    channel: str = CHANNEL
    poll_seconds: float = DEFAULT_POLL_SECONDS
    started: bool = False

    @classmethod
    def open(cls, base_url: str, token: str, account_id: str, transport: AsyncBaseTransport) -> WeixinListener:
        return cls(JsonClient.open(base_url, transport, headers=_headers_for(token), secrets=[token]), account_id)

    def _base_info(self) -> dict[str, str]:
        return {"channel_version": CHANNEL_VERSION}

    async def listen(self, intake: Intake) -> None:
        cursor = await intake.load_cursor()
        cursor = cursor if isinstance(cursor, str) else ""
        _check(await post_json(self.http, NOTIFY_START_PATH, {"base_info": self._base_info()}, read_seconds=10.0))
        self.started = True
        while True:
            body = {"get_updates_buf": cursor, "base_info": self._base_info()}
            reply = _check(
                await post_json(self.http, POLL_PATH, body, read_seconds=self.poll_seconds + READ_MARGIN_SECONDS)
            )
            intake.connected()
            hint = reply.get("longpolling_timeout_ms")
            if isinstance(hint, (int, float)) and 0 < hint <= 600_000:
                self.poll_seconds = hint / 1000
            await intake.accept_batch([h for h in map(heard, reply.get("msgs") or []) if h is not None])
            following = reply.get("get_updates_buf")
            # Advanced only after every message of the batch is a durable turn.
            if isinstance(following, str) and following and following != cursor:
                cursor = following
                await intake.save_cursor(cursor)

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await post_json(self.http, NOTIFY_STOP_PATH, {"base_info": self._base_info()}, read_seconds=5.0)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the record the registry lists -------------------------------------------------------------


@attrs.frozen
class WeixinAccount(TokenAccount):
    """A WeChat bot: its token, and the deprecated static context token (see the docstring)."""

    context_token: str | None = None


def _open_sender(a: AccountSpec) -> WeixinChannel:
    context_token = account_as(WeixinAccount, a.account).context_token
    return WeixinChannel.open(a.base_url, a.token, context_token, a.transport())


def _open_listener(a: AccountSpec, _: WebSocketConnect) -> WeixinListener:
    return WeixinListener.open(a.base_url, a.token, a.account_id, a.transport())


KIND = ChannelKind(
    name=CHANNEL,
    address=ADDRESS,
    accounts=AccountKind(WeixinAccount, require_base_url),
    classify=classify,
    open_sender=_open_sender,
    default_mode=lambda _: "poll",
    listeners={"poll": _open_listener},
    text=TEXT,
    typing_every=5.0,
)
