"""The fake WeChat (openclaw-weixin, iLink bot): `sendmessage`, deduplicated by `client_id`;
and the long poll (SPEC 11) — `getupdates` with the `get_updates_buf` cursor, held up to
`hold_ms`, and `notifystart` / `notifystop` — whose messages wait in the server's `FakeInbound`.
"""

from __future__ import annotations

import re

import attrs

from trio_gateway.sim.fake_inbound import BATCH
from trio_gateway.sim.fake_platform import (
    DIRECT,
    Delivered,
    FakeRequest,
    FakeResponse,
    FakeServer,
    Json,
    LongPollFake,
    Params,
    Rule,
    Speech,
    bad,
    bearer,
    body_dict,
    retry_after_header,
)

NAME = "openclaw-weixin"
# How long a poll is held with nothing to say (the platform's own figure).
_HOLD_MS = 35_000


@attrs.define
class WeixinFake(LongPollFake):
    name = NAME
    routes = (
        (re.compile(r"/ilink/bot/sendmessage$"), "send"),
        (re.compile(r"/ilink/bot/getupdates$"), "poll"),
        (re.compile(r"/ilink/bot/msg/notifystart$"), "notifystart"),
        (re.compile(r"/ilink/bot/msg/notifystop$"), "notifystop"),
        (re.compile(r"/ilink/bot/getconfig$"), "getconfig"),
        (re.compile(r"/ilink/bot/sendtyping$"), "typing"),
    )
    reject_default = (200, -14, "session expired")
    hold_ms: int = _HOLD_MS

    def error_body(self, code: Json, message: str) -> Json:
        return {"ret": code, "errcode": code, "errmsg": message}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        return FakeResponse(429, {"ret": -1, "errcode": -1, "errmsg": "rate limited"}, retry_after_header(rule))

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        headers = request.headers
        if headers.get("authorizationtype") != "ilink_bot_token" or not server.credential_ok(NAME, bearer(headers)):
            return bad(401, {"ret": -1, "errmsg": "unauthorized"})
        if op == "send":
            return self._send(server, request)
        if NAME in server.inbound.auth_rejected:
            return FakeResponse(200, {"ret": -14, "errcode": -14, "errmsg": "session expired"})
        if op == "getconfig":
            return FakeResponse(200, {"ret": 0, "typing_ticket": f"ticket-{server.serial()}"})
        if op == "typing":  # recorded in `requests`; a ticket is what the real API checks
            ok = str(body_dict(request).get("typing_ticket", "")).startswith("ticket-")
            return FakeResponse(200, {"ret": 0} if ok else {"ret": -1, "errmsg": "invalid typing_ticket"})
        if op in ("notifystart", "notifystop"):
            server.inbound.notified.append((NAME, op.removeprefix("notify")))
            return FakeResponse(200, {"ret": 0})
        return await self._poll(server, body_dict(request))

    def _send(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        msg = body_dict(request).get("msg")
        if not isinstance(msg, dict) or not msg.get("to_user_id") or not msg.get("item_list"):
            return bad(400, {"ret": -1, "errcode": -2, "errmsg": "invalid msg"})
        text = msg["item_list"][0].get("text_item", {}).get("text", "")
        key = msg.get("client_id")
        delivered = Delivered(NAME, msg["to_user_id"], text, key)
        return FakeResponse(200, server.once(NAME, key, delivered, {"ret": 0}))

    async def _poll(self, server: FakeServer, body: dict[str, Json]) -> FakeResponse:
        buf = body.get("get_updates_buf") or "0"
        start = int(buf) if isinstance(buf, str) and buf.isdigit() else 0
        log = server.inbound.log[NAME]
        batch = await server.inbound.hold(NAME, lambda: log[start : start + BATCH], self.hold_ms / 1000)
        return FakeResponse(
            200,
            {"ret": 0, "msgs": batch, "get_updates_buf": str(start + len(batch)),
             "longpolling_timeout_ms": self.hold_ms},
        )  # fmt: skip

    def push(
        self,
        server: FakeServer,
        text: str,
        sender: str | None,
        context_token: str | None,
        bot: bool,
        speech: Speech = DIRECT,
    ) -> str:
        n = server.inbound.serial()
        sender = sender or "user1@im.wechat"
        message = {
            "seq": n,
            "message_id": 7_000_000 + n,
            "from_user_id": sender,
            "to_user_id": "bot@im.bot",
            "message_type": 2 if bot else 1,
            "message_state": 2,
            "context_token": context_token or f"ctx-{sender}-{n}",
            "item_list": [{"type": 1, "text_item": {"text": text}}],
        }
        if speech.media:  # an image (item type 2), no text
            message["item_list"] = [{"type": 2, "image_item": {"url": f"https://fake.invalid/{n}.jpg"}}]
        if speech.group is not None:
            message["group_id"] = speech.group
        server.inbound.add(NAME, message)
        return str(message["message_id"])
