"""Telegram, all of it: the address rule; Bot API `POST /bot<token>/sendMessage` and what its
answers mean; listening by `getUpdates` long polling, or by the webhook with its secret token
header. `KIND` describes it to the registry. The token is part of the URL, so the client
only ever sees a placeholder there (`SecretPathTransport` puts the token in on the wire):
no URL we log, raise or report can carry it."""

from __future__ import annotations

import hmac
import html
import re
from typing import TypeGuard

import attrs

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
    field,
    reason_prefix,
    reply_thread,
    require_base_url,
    retry_after,
    seconds,
    short,
)
from trio_gateway.channels.http import JsonClient, SecretPathTransport, post_json
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
)
from trio_gateway.channels.markdown import Style, TextForm, html_escape
from trio_gateway.errors import UnauthorizedError
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

TOKEN_PLACEHOLDER = "TOKEN"
SEND_PATH = f"/bot{TOKEN_PLACEHOLDER}/sendMessage"
TYPING_PATH = f"/bot{TOKEN_PLACEHOLDER}/sendChatAction"
# Anything that looks like a bot token in a URL (`/bot123456:AA.../`), for text we did not build.
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


# --- how a reply is sent (SPEC 15): HTML with Telegram's tag set --------------------------------
# https://core.telegram.org/bots/api#sendmessage: "1-4096 characters after entities parsing",
# counted in UTF-16 code units (as every Bot API length is). We measure the HTML as sent, tags
# included, which is never less than what Telegram counts.

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")


def _link(text: str, url: str) -> str:
    if not url.lower().startswith(_LINK_SCHEMES):  # Telegram refuses other hrefs
        return text if text == html_escape(url) else f"{text} ({html_escape(url)})"
    return f'<a href="{html.escape(url, quote=True)}">{text}</a>'


def _fence(language: str, code: str) -> str:
    code = code.rstrip("\n")
    if language:
        return f'<pre><code class="language-{language}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


TEXT = TextForm(
    4096,
    "utf16",
    Style(
        escape=html_escape,
        strong=("<b>", "</b>"),
        em=("<i>", "</i>"),
        strike=("<s>", "</s>"),
        heading=("<b>", "</b>"),
        code=lambda code: f"<code>{code}</code>",
        fence=_fence,
        link=_link,
        quote=lambda inner: f"<blockquote>{inner}</blockquote>",
    ),
)

# What Telegram answers when the HTML does not parse: the same entry goes again as plain text.
_MALFORMED = re.compile(r"can't parse entities|unsupported start tag|can't find end tag", re.IGNORECASE)


def refused_markup(outcome: Outcome) -> bool:
    return outcome.kind == "permanent" and bool(_MALFORMED.search(outcome.reason))


ADDRESS = AddressRule(re.compile(r"^(?:-?\d+|@[A-Za-z][A-Za-z0-9_]{3,31})$"), "a numeric chat id or @username")


def _scrub_url(text: str) -> str:
    return _TOKEN_IN_URL.sub(f"/bot{TOKEN_PLACEHOLDER}", text)


def chat_id(to: str) -> int | str:
    """Numeric chat ids go as numbers, `@channelusername` as a string, as the Bot API documents."""
    return int(to) if re.fullmatch(r"-?\d+", to) else to


def classify(status: int, body: object, headers: Headers) -> Outcome:
    """`{"ok": true}` or `{"ok": false, "error_code", "description", "parameters": {"retry_after"}}`."""
    if field(body, "ok") is True and 200 <= status < 300:
        return OK
    code = field(body, "error_code")
    reason = reason_prefix(status, "telegram", code, field(body, "description"))
    parameters = field(body, "parameters")
    if code == 429 or status == 429:
        delay = seconds(field(parameters, "retry_after"))
        return Outcome("rate_limited", reason, delay if delay is not None else retry_after(headers), status)
    if field(parameters, "migrate_to_chat_id") is not None:
        return Outcome("permanent", short(f"{reason} (group moved to {field(parameters, 'migrate_to_chat_id')})"))
    effective = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else status
    if 200 <= effective < 300:
        return Outcome("retry", reason, http_status=status)
    return attrs.evolve(by_status(effective, headers, reason), http_status=status)


@attrs.define
class TelegramChannel:
    http: JsonClient
    name: str = "telegram"
    deduplicates: bool = False

    @classmethod
    def open(cls, base_url: str, token: str, transport: AsyncBaseTransport) -> TelegramChannel:
        wire = SecretPathTransport(transport, f"/bot{TOKEN_PLACEHOLDER}/", f"/bot{token}/")
        return cls(JsonClient.open(base_url, wire, secrets=[token]))

    async def send(self, entry: DeliveryEntry) -> Outcome:
        where: dict[str, object] = {"chat_id": chat_id(entry.to)}
        thread = reply_thread(entry, self.name)
        if thread is not None and thread.isdigit():  # a forum topic: the reply stays in it
            where["message_thread_id"] = int(thread)
        body = {**where, "text": TEXT.render(entry.payload.text), "parse_mode": "HTML"}
        outcome = await self.http.send(SEND_PATH, body, classify)
        if refused_markup(outcome):
            # Our HTML is at fault, not the message: once more as plain text, in the same attempt
            # (same entry, same idempotency key) rather than a dead letter.
            plain = {**where, "text": TEXT.plain(entry.payload.text)}
            outcome = await self.http.send(SEND_PATH, plain, classify)
        return attrs.evolve(outcome, reason=_scrub_url(outcome.reason))

    async def show_typing(self, to: str, context_token: str | None) -> None:
        """`sendChatAction` `typing`: shown for 5 s or until the next message."""
        await self.http.send(TYPING_PATH, {"chat_id": chat_id(to), "action": "typing"}, classify)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening (SPEC 11): getUpdates long polling ----------------------------------------------

POLL_PATH = f"/bot{TOKEN_PLACEHOLDER}/getUpdates"
POLL_SECONDS = 30
READ_MARGIN_SECONDS = 10.0


ME_PATH = f"/bot{TOKEN_PLACEHOLDER}/getMe"
# What a message may carry instead of text; one with none of these and no text is a service
# message (a member joined, a title changed, a pin): never a turn.
_MEDIA_KEYS = ("photo", "voice", "audio", "video", "video_note", "document", "sticker", "animation")


def heard(update: object, me: BotSelf = UNKNOWN_BOT) -> Heard | None:
    """A message from a person (not a bot), in a private chat or a group, or None: the one
    reading of an update for the long poll and the webhook alike (SPEC 15 "consistency").
    Only `message`: an `edited_message` or a channel post is never a turn. A photo's caption
    is its text; a mention of the bot (`@username` entity, or a reply to one of its messages)
    makes it `addressed`, and is taken out of the text."""
    if not isinstance(update, dict):
        return None
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    author = json_dict(message.get("from"))
    chat = json_dict(message.get("chat"))
    sender, chat_ident = author.get("id"), chat.get("id")
    if author.get("is_bot") or not _is_int(chat_ident):
        return None
    text = message.get("text", message.get("caption"))
    text = text if isinstance(text, str) else ""
    media = not text.strip() and any(key in message for key in _MEDIA_KEYS)
    if not text.strip() and not media:
        return None
    entities = message.get("entities", message.get("caption_entities"))
    addressed, text = _addressed(text, entities if isinstance(entities, list) else [], me)
    reply_to = json_dict(json_dict(message.get("reply_to_message")).get("from"))
    addressed = addressed or (me.user_id is not None and str(reply_to.get("id")) == me.user_id)
    thread = message.get("message_thread_id") if message.get("is_topic_message") else None
    return Heard(
        str(update.get("update_id")),
        str(chat_ident),
        text,
        sender=str(sender) if _is_int(sender) else None,
        chat="direct" if chat.get("type") == "private" else "group",
        addressed=addressed,
        thread=str(thread) if _is_int(thread) else None,
        media=media,
    )


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _addressed(text: str, entities: list[object], me: BotSelf) -> tuple[bool, str]:
    """(does the text mention the bot, the text without those mentions). Entity offsets count
    UTF-16 code units, as every Bot API offset does."""
    if not entities:
        return False, text
    # `surrogatepass`: a lone surrogate is the poison check's to refuse (`rejected.py`), not ours.
    units = text.encode("utf-16-le", errors="surrogatepass")
    name = f"@{me.username}".lower() if me.username else None
    cut: list[tuple[int, int]] = []
    addressed = False
    for entity in map(json_dict, entities):
        start, length = entity.get("offset"), entity.get("length")
        if not _is_int(start) or not _is_int(length):
            continue
        span = (2 * start, 2 * (start + length))
        said = units[span[0] : span[1]].decode("utf-16-le", errors="surrogatepass").lower()
        kind = entity.get("type")
        named = str(json_dict(entity.get("user")).get("id"))
        if (kind == "mention" and said == name) or (kind == "text_mention" and named == me.user_id):
            addressed = True
            cut.append(span)
        elif kind == "bot_command" and name is not None and said.endswith(name):
            addressed = True  # `/stop@bot` in a group: the command stays whole for its handler
    for begin, end in sorted(cut, reverse=True):
        units = units[:begin] + units[end:]
    return addressed, " ".join(units.decode("utf-16-le", errors="surrogatepass").split()) if cut else text


async def get_me(http: JsonClient) -> BotSelf:
    """`getMe`: the bot's user id and username (a mention names the username)."""
    reply = await post_json(http, ME_PATH, {}, read_seconds=READ_MARGIN_SECONDS)
    me = json_dict(json_dict(reply).get("result"))
    username, ident = me.get("username"), me.get("id")
    if not isinstance(username, str) or not _is_int(ident):
        raise ListenError(f"getMe: {_scrub_url(str(reply))[:200]}")
    return BotSelf(str(ident), username)


@attrs.define
class TelegramListener:
    http: JsonClient
    account_id: str
    channel: str = "telegram"
    # Who the bot is (`getMe`), asked once per listener: it does not change while it runs.
    me: BotSelf | None = None

    @classmethod
    def open(cls, base_url: str, token: str, account_id: str, transport: AsyncBaseTransport) -> TelegramListener:
        wire = SecretPathTransport(transport, f"/bot{TOKEN_PLACEHOLDER}/", f"/bot{token}/")
        return cls(JsonClient.open(base_url, wire, secrets=[token]), account_id)

    async def listen(self, intake: Intake) -> None:
        offset = await intake.load_cursor()
        while True:
            body: dict[str, object] = {"timeout": POLL_SECONDS, "allowed_updates": ["message"]}
            if isinstance(offset, int) and not isinstance(offset, bool):
                body["offset"] = offset
            try:
                reply = await post_json(self.http, POLL_PATH, body, read_seconds=POLL_SECONDS + READ_MARGIN_SECONDS)
            except (ListenError, AuthFailed) as exc:
                raise type(exc)(_scrub_url(str(exc))) from None
            if not isinstance(reply, dict) or reply.get("ok") is not True or not isinstance(reply.get("result"), list):
                raise ListenError(f"getUpdates: {_scrub_url(str(reply))[:200]}")
            intake.connected()
            updates = [u for u in reply["result"] if isinstance(u, dict) and isinstance(u.get("update_id"), int)]
            await intake.accept_batch(await self._read(updates))
            if updates:
                # Confirmed to Telegram by the next poll's offset, after every turn is durable.
                offset = max(u["update_id"] for u in updates) + 1
                await intake.save_cursor(offset)

    async def _read(self, updates: list[dict[str, object]]) -> list[Heard]:
        """The batch as the webhook reads it. Who the bot is (`getMe`, asked once) matters only
        for a group message, so a bot that is only written to directly never asks."""
        found = [h for u in updates if (h := heard(u, self.me or UNKNOWN_BOT)) is not None]
        if self.me is not None or not any(h.chat == "group" for h in found):
            return found
        try:
            self.me = await get_me(self.http)
        except (ListenError, AuthFailed) as exc:
            raise type(exc)(_scrub_url(str(exc))) from None
        return [h for u in updates if (h := heard(u, self.me)) is not None]

    async def stop(self) -> None:
        # Telegram has no stop call: an unconfirmed offset is simply read again next time.
        pass

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the webhook (SPEC 5): `X-Telegram-Bot-Api-Secret-Token` ----------------------------------


@attrs.frozen
class TelegramAccount(TokenAccount):
    """A Telegram bot: its token; with a webhook, the secret token Telegram sends back (SPEC 5)."""

    secret_token_env: str | None = None


def verify_secret_token(request: WebhookRequest) -> None:
    secret = request.secret(account_as(TelegramAccount, request.account).secret_token_env, "secretTokenEnv")
    given = request.headers.get("x-telegram-bot-api-secret-token", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise UnauthorizedError("bad X-Telegram-Bot-Api-Secret-Token")


def parse_webhook(request: WebhookRequest) -> Event:
    """The same reading as the long poll's (`heard`): an edit, a bot or a service message is
    ignored here as it is skipped there."""
    verify_secret_token(request)
    return message_event(heard(request.json(), request.me), "telegram update")


async def _whoami(a: AccountSpec) -> BotSelf:
    http = TelegramChannel.open(a.base_url, a.token, a.transport()).http
    try:
        return await get_me(http)
    finally:
        await http.aclose()


# --- the record the registry lists -------------------------------------------------------------


def _open_sender(a: AccountSpec) -> TelegramChannel:
    return TelegramChannel.open(a.base_url, a.token, a.transport())


def _open_listener(a: AccountSpec, _: WebSocketConnect) -> TelegramListener:
    return TelegramListener.open(a.base_url, a.token, a.account_id, a.transport())


def _default_mode(account: AccountConfig) -> str:
    # Telegram refuses getUpdates while a webhook is set: a secret token means a webhook.
    return "webhook" if account_as(TelegramAccount, account).secret_token_env else "poll"


KIND = ChannelKind(
    name="telegram",
    address=ADDRESS,
    accounts=AccountKind(TelegramAccount, require_base_url),
    classify=classify,
    open_sender=_open_sender,
    default_mode=_default_mode,
    listeners={"poll": _open_listener},
    webhook=Webhook(verify_secret_token, parse_webhook, _whoami),
    text=TEXT,
    typing_every=4.0,  # the action shows for 5 s
)
