"""Telegram Bot API: `POST /bot<token>/sendMessage`, and listening by `getUpdates` long polling.
The token is part of the URL, so the client
only ever sees a placeholder there (`SecretPathTransport` puts the token in on the wire):
no URL we log, raise or report can carry it."""

from __future__ import annotations

import re

import attrs

from trio_gateway.channels.classify import Outcome, classify_telegram
from trio_gateway.channels.http import JsonClient, SecretPathTransport
from trio_gateway.channels.listen import AuthFailed, Heard, Intake, ListenError, post_json
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

TOKEN_PLACEHOLDER = "TOKEN"
SEND_PATH = f"/bot{TOKEN_PLACEHOLDER}/sendMessage"
# Anything that looks like a bot token in a URL (`/bot123456:AA.../`), for text we did not build.
_TOKEN_IN_URL = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")


def scrub_url(text: str) -> str:
    return _TOKEN_IN_URL.sub(f"/bot{TOKEN_PLACEHOLDER}", text)


def chat_id(to: str) -> int | str:
    """Numeric chat ids go as numbers, `@channelusername` as a string, as the Bot API documents."""
    return int(to) if re.fullmatch(r"-?\d+", to) else to


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
        outcome = await self.http.send(SEND_PATH, body, classify_telegram)
        return attrs.evolve(outcome, reason=scrub_url(outcome.reason))

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
                raise type(exc)(scrub_url(str(exc))) from None
            if not isinstance(reply, dict) or reply.get("ok") is not True or not isinstance(reply.get("result"), list):
                raise ListenError(f"getUpdates: {scrub_url(str(reply))[:200]}")
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
