"""Telegram, all of it: the address rule; Bot API `POST /bot<token>/sendMessage` and what its
answers mean; listening by `getUpdates` long polling, or by the webhook with its secret token
header. `KIND` describes it to the registry. The token is part of the URL, so the client
only ever sees a placeholder there (`SecretPathTransport` puts the token in on the wire):
no URL we log, raise or report can carry it."""

from __future__ import annotations

import hmac
import re

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
    require_base_url,
    retry_after,
    seconds,
    short,
)
from trio_gateway.channels.http import JsonClient, SecretPathTransport, post_json
from trio_gateway.channels.inbound import (
    AuthFailed,
    Event,
    Heard,
    Intake,
    ListenError,
    WebhookRequest,
    WebSocketConnect,
    json_dict,
    message_event,
)
from trio_gateway.errors import UnauthorizedError
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

TOKEN_PLACEHOLDER = "TOKEN"
SEND_PATH = f"/bot{TOKEN_PLACEHOLDER}/sendMessage"
# Anything that looks like a bot token in a URL (`/bot123456:AA.../`), for text we did not build.
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")
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
        body = {"chat_id": chat_id(entry.to), "text": entry.payload.text}
        outcome = await self.http.send(SEND_PATH, body, classify)
        return attrs.evolve(outcome, reason=_scrub_url(outcome.reason))

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening (SPEC 11): getUpdates long polling ----------------------------------------------

POLL_PATH = f"/bot{TOKEN_PLACEHOLDER}/getUpdates"
POLL_SECONDS = 30
READ_MARGIN_SECONDS = 10.0


def heard(update: object) -> Heard | None:
    """Text from a person (not a bot) in a chat, or None."""
    if not isinstance(update, dict):
        return None
    message = update.get("message")
    if not isinstance(message, dict):
        return None
    sender = message.get("from")
    if isinstance(sender, dict) and sender.get("is_bot"):
        return None
    chat = message.get("chat")
    chat_ident = chat.get("id") if isinstance(chat, dict) else None
    text = message.get("text")
    if isinstance(chat_ident, bool) or not isinstance(chat_ident, int) or not isinstance(text, str) or not text.strip():
        return None
    return Heard(str(update.get("update_id")), str(chat_ident), text)


@attrs.define
class TelegramListener:
    http: JsonClient
    account_id: str
    channel: str = "telegram"

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
            await intake.accept_batch([h for h in map(heard, updates) if h is not None])
            if updates:
                # Confirmed to Telegram by the next poll's offset, after every turn is durable.
                offset = max(u["update_id"] for u in updates) + 1
                await intake.save_cursor(offset)

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
    verify_secret_token(request)
    data = request.json()
    message = json_dict(data.get("message") or data.get("edited_message"))
    if not message:
        return Event(ignored="telegram update without a message")
    chat_ident = json_dict(message.get("chat")).get("id")
    return message_event(
        str(chat_ident) if isinstance(chat_ident, int) else None,
        message.get("text"),
        "message.chat.id",
        "message.text",
        data.get("update_id"),
    )


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
    webhook=Webhook(verify_secret_token, parse_webhook),
)
