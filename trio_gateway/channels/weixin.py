"""openclaw-weixin (WeChat iLink bot): `POST /ilink/bot/sendmessage`."""

from __future__ import annotations

from typing import Any

import attrs

from trio_gateway.channels.http import JsonClient
from trio_gateway.classify import Outcome, classify_weixin
from trio_gateway.entry import DeliveryEntry
from trio_gateway.http_client import AsyncBaseTransport

SEND_PATH = "/ilink/bot/sendmessage"
MESSAGE_TYPE_BOT = 2
MESSAGE_STATE_FINISH = 2
ITEM_TYPE_TEXT = 1


def message_body(entry: DeliveryEntry, context_token: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "to_user_id": entry.to,
        "client_id": entry.idempotency_key,
        "message_type": MESSAGE_TYPE_BOT,
        "message_state": MESSAGE_STATE_FINISH,
        "item_list": [{"type": ITEM_TYPE_TEXT, "text_item": {"text": entry.payload.text}}],
    }
    if context_token:
        msg["context_token"] = context_token
    return {"msg": msg}


@attrs.define
class WeixinChannel:
    http: JsonClient
    context_token: str | None = None
    name: str = "openclaw-weixin"
    deduplicates: bool = True

    @classmethod
    def open(cls, base_url: str, token: str, context_token: str | None, transport: AsyncBaseTransport) -> WeixinChannel:
        headers = {"Authorization": f"Bearer {token}", "AuthorizationType": "ilink_bot_token"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[token]), context_token)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        return await self.http.send(SEND_PATH, message_body(entry, self.context_token), classify_weixin)

    async def aclose(self) -> None:
        await self.http.aclose()
