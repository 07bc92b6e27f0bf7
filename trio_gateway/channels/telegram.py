"""Telegram Bot API: `POST /bot<token>/sendMessage`. The token is part of the URL, so the client
only ever sees a placeholder there (`SecretPathTransport` puts the token in on the wire):
no URL we log, raise or report can carry it."""

from __future__ import annotations

import re

import attrs

from trio_gateway.channels.http import JsonClient, SecretPathTransport
from trio_gateway.classify import Outcome, classify_telegram
from trio_gateway.entry import DeliveryEntry
from trio_gateway.http_client import AsyncBaseTransport

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
