"""Slack Web API: `POST /chat.postMessage`. Slack takes no idempotency key, so a resend after
a crash may show the message twice (the worker logs it as a possible duplicate)."""

from __future__ import annotations

import attrs

from trio_gateway.channels.http import JsonClient
from trio_gateway.classify import Outcome, classify_slack
from trio_gateway.entry import DeliveryEntry
from trio_gateway.http_client import AsyncBaseTransport

SEND_PATH = "/chat.postMessage"


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
        return await self.http.send(SEND_PATH, {"channel": entry.to, "text": entry.payload.text}, classify_slack)

    async def aclose(self) -> None:
        await self.http.aclose()
