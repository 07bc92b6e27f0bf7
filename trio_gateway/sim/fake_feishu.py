"""The fake Feishu: its send API (tenant token, then messages; `FeishuFake`) and its long
connection (SPEC 11; `FakeFeishuSocket`): the websocket event subscription as the official SDK
speaks it, protobuf `pbbp2.Frame`s over a real trio-websocket connection on in-memory streams.

Each `push` becomes an `im.message.receive_v1` event in a data frame (split in two parts with
`split=True`, as the platform does for large events); pings get pongs; an event not acknowledged
(the frame back with payload `{"code": 200}`) is sent again on the next connection. Steering:
`push(text, open_id)`, `drop_connection()`, `reject_auth()` (the endpoint answers code 514).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio
import trio_websocket

from trio_gateway.channels.feishu import METHOD_CONTROL, METHOD_DATA, Frame, decode_frame, encode_frame
from trio_gateway.sim.fake_inbound import SteerableSocket, in_memory_websocket
from trio_gateway.sim.fake_platform import (
    DIRECT,
    Delivered,
    FakeRequest,
    FakeResponse,
    FakeServer,
    Json,
    Params,
    Rule,
    SocketFake,
    Speech,
    bad,
    bearer,
    body_dict,
    number_text,
)

HOST = "feishu-ws.fake.invalid"
# The app id a fake account names (`account_keys`) and the fake's events carry.
_APP_ID = "cli_fake_app"
# The fake app's bot (`bot/v3/info`): a `mentions` entry with this open_id addresses it.
BOT_OPEN_ID = "ou_fake_bot"
_SERVICE_ID = 7


@attrs.define
class FakeFeishuSocket(SteerableSocket):
    events: list[tuple[str, bytes]] = attrs.Factory(list)  # (message_id, event JSON)
    acked: set[str] = attrs.Factory(set)
    pings: int = 0
    split: bool = False
    # The `ClientConfig` a pong carries (the real server sends its timing there), or none.
    pong_config: dict[str, Any] | None = None
    # Frames a hostile platform sends as they are (a lying `sum`, parts that never complete).
    injected: list[bytes] = attrs.Factory(list)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def inject(self, frame: Frame) -> None:
        """`frame` goes on the open connection as it is, before any event still to send."""
        self.injected.append(encode_frame(frame))
        self._wake()

    def push(self, text: str, open_id: str | None = None, *, bot: bool = False, speech: Speech = DIRECT) -> str:
        n = next(self._ids)
        event_id = f"fs-ev-{n}"
        self.events.append((f"msg-{n}", json.dumps(message_event(n, text, open_id, bot, speech)).encode()))
        self._wake()
        return event_id

    def unacked(self) -> list[tuple[str, bytes]]:
        return [(m, p) for m, p in self.events if m not in self.acked]

    def endpoint_answer(self) -> dict[str, Any]:
        if self.auth_rejected:
            return {"code": 514, "msg": "auth failed"}
        url = f"wss://{HOST}/ws/v2?device_id=dev-{self.connections + 1}&service_id={_SERVICE_ID}"
        return {"code": 0, "data": {"URL": url, "ClientConfig": {"PingInterval": 90, "ReconnectCount": -1}}}

    def connect(self, url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        return in_memory_websocket(HOST, "/ws/v2", self._serve)

    async def _stream(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        drops = self._drops
        sent: set[str] = set()
        while self._drops == drops:
            changed = self._changed
            while self.injected:
                await ws.send_message(self.injected.pop(0))
            for message_id, payload in self.unacked():
                if message_id not in sent:
                    await self._send_event(ws, message_id, payload)
                    sent.add(message_id)
            await changed.wait()
        await stream.aclose()  # dropped without a close frame

    async def _send_event(self, ws: trio_websocket.WebSocketConnection, message_id: str, payload: bytes) -> None:
        parts = [payload[: len(payload) // 2], payload[len(payload) // 2 :]] if self.split else [payload]
        for index, part in enumerate(parts):
            headers = [("type", "event"), ("message_id", message_id), ("sum", str(len(parts))),
                       ("seq", str(index)), ("trace_id", f"trace-{message_id}")]  # fmt: skip
            frame = Frame(seq_id=index, service=_SERVICE_ID, method=METHOD_DATA, headers=headers, payload=part)
            await ws.send_message(encode_frame(frame))

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            raw = await ws.get_message()
            frame = decode_frame(raw if isinstance(raw, bytes) else raw.encode())
            if frame.method == METHOD_CONTROL and frame.header("type") == "ping":
                self.pings += 1
                config = json.dumps(self.pong_config).encode() if self.pong_config is not None else None
                pong = Frame(service=_SERVICE_ID, method=METHOD_CONTROL, headers=[("type", "pong")], payload=config)
                await ws.send_message(encode_frame(pong))
            elif frame.method == METHOD_DATA and json.loads(frame.payload or b"{}").get("code") == 200:
                self.acked.add(frame.header("message_id") or "")


# --- the send API --------------------------------------------------------------------------------

NAME = "feishu"
_TOKEN_INVALID = 99991663


def message_event(n: int, text: str, open_id: str | None, bot: bool, speech: Speech = DIRECT) -> dict[str, Any]:
    """An `im.message.receive_v1` event as Feishu sends it (long connection or webhook): in a
    `p2p` chat, or in the group `speech.group`; a mention of the bot is the `@_user_1`
    placeholder in the text and the bot in `mentions`."""
    sender = speech.user or open_id or "ou_fake_user"
    message: dict[str, Any] = {
        "message_id": f"om_{n}",
        "chat_id": speech.group or f"oc_p2p_{sender}",
        "chat_type": "group" if speech.group else "p2p",
        "message_type": "image" if speech.media else "text",
        "content": json.dumps({"image_key": f"img_{n}"} if speech.media else {"text": text}),
    }
    if speech.mention and not speech.media:
        message["content"] = json.dumps({"text": f"@_user_1 {text}"})
        message["mentions"] = [{"key": "@_user_1", "id": {"open_id": BOT_OPEN_ID}, "name": "Fake bot"}]
    if speech.thread is not None:
        message["thread_id"] = speech.thread
    return {
        "schema": "2.0",
        "header": {"event_id": f"fs-ev-{n}", "event_type": "im.message.receive_v1", "app_id": _APP_ID},
        "event": {
            "sender": {"sender_id": {"open_id": sender}, "sender_type": "app" if bot else "user"},
            "message": message,
        },
    }


@attrs.define
class FeishuFake(SocketFake):
    name = NAME
    routes = (
        (re.compile(r"/open-apis/auth/v3/tenant_access_token/internal$"), "token"),
        (re.compile(r"/open-apis/im/v1/messages$"), "send"),
        (re.compile(r"/callback/ws/endpoint$"), "endpoint"),
        (re.compile(r"/open-apis/bot/v3/info$"), "bot"),
    )
    reject_default = (400, 99992360, "Invalid ids")
    websocket_host = HOST

    @classmethod
    def account_keys(cls, env_prefix: str) -> dict[str, str]:
        # An app id and secret, traded for a tenant token (`op == "token"`), not a bot token.
        return {"appId": _APP_ID, "appSecretEnv": f"{env_prefix}_APP_SECRET"}

    socket: FakeFeishuSocket = attrs.Factory(FakeFeishuSocket)
    token_expire: int = 7200
    # Tenant tokens issued, with the trio time each expires.
    tokens: dict[str, float] = attrs.Factory(dict)

    def error_body(self, code: Json, message: str) -> Json:
        return {"code": code, "msg": message, "data": {}}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        wait = number_text(rule.retry_after if rule.retry_after is not None else 1.0)
        body = {"code": rule.code or 99991400, "msg": "request trigger frequency limit"}
        return FakeResponse(429, body, {"x-ogw-ratelimit-reset": wait})

    def expire_tokens(self) -> None:
        """Revoke every tenant token issued so far: the next send gets code 99991663."""
        self.tokens.clear()

    async def answer_any_method(
        self, server: FakeServer, request: FakeRequest, op: str, params: Params
    ) -> FakeResponse | None:
        if op == "bot":  # a GET, with a tenant token
            token = bearer(request.headers)
            if token is None or self.tokens.get(token, -math.inf) <= trio.current_time():
                return bad(400, {"code": _TOKEN_INVALID, "msg": "Invalid access token for authorization"})
            return FakeResponse(200, {"code": 0, "msg": "ok", "bot": {"open_id": BOT_OPEN_ID, "app_name": "Fake"}})
        if op != "endpoint":
            return None
        body = body_dict(request)
        if not body.get("AppID") or not server.credential_ok(NAME, body.get("AppSecret")):
            return FakeResponse(200, {"code": 1000040344, "msg": "app_id or app_secret is invalid"})
        return FakeResponse(200, self.socket.endpoint_answer())

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        return self._token(server, request) if op == "token" else self._send(server, request)

    def _token(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        body = body_dict(request)
        if not body.get("app_id") or not server.credential_ok(NAME, body.get("app_secret")):
            return bad(400, {"code": 10014, "msg": "app secret invalid"})
        token = f"t-fake-{server.serial()}"
        self.tokens[token] = trio.current_time() + self.token_expire
        return FakeResponse(200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_expire})

    def _send(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        token = bearer(request.headers)
        if token is None or self.tokens.get(token, -math.inf) <= trio.current_time():
            return bad(400, {"code": _TOKEN_INVALID, "msg": "Invalid access token for authorization"})
        body = body_dict(request)
        problem = _problem(request.query.get("receive_id_type"), body)
        if problem:
            return bad(400, {"code": 99992402, "msg": f"field validation failed: {problem}"})
        text = json.loads(body["content"])["text"]
        answer = {"code": 0, "msg": "success", "data": {"message_id": f"om_{server.serial()}"}}
        uuid = body.get("uuid")
        return FakeResponse(200, server.once(NAME, uuid, Delivered(NAME, body["receive_id"], text, uuid), answer))


def _problem(receive_id_type: str | None, body: dict[str, Json]) -> str | None:
    if receive_id_type not in ("open_id", "union_id", "chat_id", "user_id", "email"):
        return f"receive_id_type {receive_id_type!r}"
    if not body.get("receive_id") or body.get("msg_type") != "text":
        return "receive_id and msg_type text are required"
    uuid = body.get("uuid")
    if uuid is not None and len(str(uuid)) > 50:
        return "uuid longer than 50 characters"
    try:
        content = json.loads(body.get("content", ""))
    except (TypeError, ValueError):
        return "content is not JSON"
    return None if isinstance(content, dict) and isinstance(content.get("text"), str) else "content.text missing"
