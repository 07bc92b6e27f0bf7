"""The fake Telegram Bot API: `sendMessage` and the `getUpdates` long poll (SPEC 11), the bot
token in the path as the real API has it; updates wait in the server's `FakeInbound`."""

from __future__ import annotations

import math
import re

import attrs

from trio_gateway.sim.fake_inbound import BATCH
from trio_gateway.sim.fake_platform import (
    Delivered,
    FakeRequest,
    FakeResponse,
    FakeServer,
    Json,
    LongPollFake,
    Params,
    Rule,
    bad,
    body_dict,
    number_text,
)

NAME = "telegram"
UNAUTHORIZED = {"ok": False, "error_code": 401, "description": "Unauthorized"}


@attrs.define
class TelegramFake(LongPollFake):
    name = NAME
    routes = (
        (re.compile(r"/bot(?P<token>[^/]+)/sendMessage$"), "send"),
        (re.compile(r"/bot(?P<token>[^/]+)/getUpdates$"), "poll"),
    )
    reject_default = (400, 400, "Bad Request: chat not found")

    def error_body(self, code: Json, message: str) -> Json:
        return {"ok": False, "error_code": code, "description": message}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        after = rule.retry_after if rule.retry_after is not None else 1.0
        wait = number_text(after)
        body = {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {wait}",
            "parameters": {"retry_after": math.ceil(after)},
        }
        return FakeResponse(429, body, {"Retry-After": wait})

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        if not server.credential_ok(NAME, params["token"]):
            return bad(401, UNAUTHORIZED)
        if op == "send":
            return self._send(server, request)
        if NAME in server.inbound.auth_rejected:
            return FakeResponse(401, UNAUTHORIZED)
        return await self._poll(server, body_dict(request))

    def _send(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        body = body_dict(request)
        if body.get("chat_id") in (None, "") or not body.get("text"):
            return bad(400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"})
        chat = body["chat_id"]
        server.messages.append(Delivered(NAME, str(chat), body["text"]))
        result = {"message_id": server.serial(), "chat": {"id": chat}, "text": body["text"]}
        return FakeResponse(200, {"ok": True, "result": result})

    async def _poll(self, server: FakeServer, body: dict[str, Json]) -> FakeResponse:
        offset = body.get("offset")
        first = offset if isinstance(offset, int) else 0
        timeout = body.get("timeout")
        hold = float(timeout) if isinstance(timeout, (int, float)) else 0.0
        log = server.inbound.log[NAME]

        def due() -> list[dict[str, Json]]:
            return [u for u in log if u["update_id"] >= first][:BATCH]

        return FakeResponse(200, {"ok": True, "result": await server.inbound.hold(NAME, due, hold)})

    def push(self, server: FakeServer, text: str, sender: str | None, context_token: str | None, bot: bool) -> str:
        n = server.inbound.serial()
        chat = int(sender) if sender and sender.lstrip("-").isdigit() else 4242
        update = {
            "update_id": 90_000 + n,
            "message": {
                "message_id": n,
                "from": {"id": chat, "is_bot": bot, "first_name": "Tess"},
                "chat": {"id": chat, "type": "private"},
                "date": 1_700_000_000 + n,
                "text": text,
            },
        }
        server.inbound.add(NAME, update)
        return str(update["update_id"])
