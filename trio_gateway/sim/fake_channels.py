"""Fake channel servers: one object that speaks every supported channel's send API (and Feishu's
token endpoint, Discord's DM-channel endpoint), records each request, deduplicates by the
idempotency key where the real platform does, and accepts, rejects, fails, rate-limits or answers
slowly on command.

Two ways to use it, same behaviour:
- in-process: `FakeChannels().transport()` is an `upstream.AsyncBaseTransport` (no sockets; delays
  are trio sleeps, so MockClock tests run instantly);
- on loopback: `await nursery.start(serve_fake_channels, fakes)` returns the base URL, or
  `python -m trio_gateway.sim.fake_channels --port N` prints it as its first stdout line and
  is steered over HTTP (`POST /_fake/control`, `GET /_fake/requests`, `GET /_fake/messages`).

Every channel lives on its own paths, so one fake can be the `baseUrl` of every account.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.http.asgi import lifespan
from trio_gateway.sim.fake_discord import FakeDiscordGateway
from trio_gateway.sim.fake_feishu import FakeFeishuSocket
from trio_gateway.sim.fake_inbound import Dropped, FakeInbound
from trio_gateway.sim.fake_slack import FakeSlackSocket

Json = Any
Action = Literal["reject", "fail", "rate_limit"]
CHANNELS = ("feishu", "openclaw-weixin", "slack", "discord", "telegram")
FEISHU_TOKEN_INVALID = 99991663


@attrs.frozen
class FakeRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: Json  # parsed JSON, None when not JSON
    at: float = 0.0  # trio time it arrived
    channel: str = ""
    op: str = ""


@attrs.frozen
class FakeResponse:
    status: int
    body: Json
    headers: Mapping[str, str] = attrs.Factory(dict)

    def encode(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


@attrs.frozen
class Delivered:
    """A message a user would have seen: what arrived and was accepted, once per idempotency key."""

    channel: str
    to: str
    text: str
    key: str | None = None


@attrs.define
class Rule:
    action: Action
    remaining: int | None  # None: until the next `accept()`
    status: int | None = None
    code: Json = None
    message: str | None = None
    retry_after: float | None = None


# --- what each channel answers ----------------------------------------------------------------

# (HTTP status, code, message) a rejection uses when the test names none.
REJECT_DEFAULTS: dict[str, tuple[int, Json, str]] = {
    "feishu": (400, 99992360, "Invalid ids"),
    "openclaw-weixin": (200, -14, "session expired"),
    "slack": (200, "channel_not_found", ""),
    "discord": (404, 10003, "Unknown Channel"),
    "telegram": (400, 400, "Bad Request: chat not found"),
}


def rejection(channel: str, rule: Rule) -> FakeResponse:
    default_status, default_code, default_message = REJECT_DEFAULTS[channel]
    status = rule.status or default_status
    code = default_code if rule.code is None else rule.code
    message = default_message if rule.message is None else rule.message
    headers = {"Retry-After": _number(rule.retry_after)} if rule.retry_after is not None else {}
    bodies: dict[str, Json] = {
        "feishu": {"code": code, "msg": message, "data": {}},
        "openclaw-weixin": {"ret": code, "errcode": code, "errmsg": message},
        "slack": {"ok": False, "error": code},
        "discord": {"code": code, "message": message},
        "telegram": {"ok": False, "error_code": code, "description": message},
    }
    return FakeResponse(status, bodies[channel], headers)


def rate_limited(channel: str, rule: Rule) -> FakeResponse:
    after = rule.retry_after if rule.retry_after is not None else 1.0
    wait = _number(after)
    bodies: dict[str, Json] = {
        "feishu": {"code": rule.code or 99991400, "msg": "request trigger frequency limit"},
        "openclaw-weixin": {"ret": -1, "errcode": -1, "errmsg": "rate limited"},
        "slack": {"ok": False, "error": "ratelimited"},
        "discord": {"message": "You are being rate limited.", "retry_after": after, "global": False},
        "telegram": {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {wait}",
            "parameters": {"retry_after": math.ceil(after)},
        },
    }
    headers = {"x-ogw-ratelimit-reset": wait} if channel == "feishu" else {"Retry-After": wait}
    return FakeResponse(429, bodies[channel], headers)


def failure(rule: Rule) -> FakeResponse:
    return FakeResponse(rule.status or 503, b"Service Unavailable", {"content-type": "text/plain"})


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --- routing ----------------------------------------------------------------------------------

# Matched at the end of the path, so a base URL with a prefix (`/api`, `/api/v10`) works too.
ROUTES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"/open-apis/auth/v3/tenant_access_token/internal$"), "feishu", "token"),
    (re.compile(r"/open-apis/im/v1/messages$"), "feishu", "send"),
    (re.compile(r"/ilink/bot/sendmessage$"), "openclaw-weixin", "send"),
    (re.compile(r"/chat\.postMessage$"), "slack", "send"),
    (re.compile(r"/users/@me/channels$"), "discord", "dm"),
    (re.compile(r"/channels/(?P<id>\d+)/messages$"), "discord", "send"),
    (re.compile(r"/bot(?P<token>[^/]+)/sendMessage$"), "telegram", "send"),
    # The listening side (SPEC 11): testing/fake_inbound.py.
    (re.compile(r"/ilink/bot/getupdates$"), "openclaw-weixin", "poll"),
    (re.compile(r"/ilink/bot/msg/notifystart$"), "openclaw-weixin", "notifystart"),
    (re.compile(r"/ilink/bot/msg/notifystop$"), "openclaw-weixin", "notifystop"),
    (re.compile(r"/bot(?P<token>[^/]+)/getUpdates$"), "telegram", "poll"),
    (re.compile(r"/gateway/bot$"), "discord", "gateway"),
    (re.compile(r"/apps\.connections\.open$"), "slack", "connect"),
    (re.compile(r"/callback/ws/endpoint$"), "feishu", "endpoint"),
]
INBOUND_OPS = ("poll", "notifystart", "notifystop")


def route(path: str) -> tuple[str, str, dict[str, str]] | None:
    for pattern, channel, op in ROUTES:
        match = pattern.search(path)
        if match:
            return channel, op, match.groupdict()
    return None


def _bearer(headers: Mapping[str, str], scheme: str = "Bearer") -> str | None:
    value = headers.get("authorization", "")
    prefix = f"{scheme} "
    return value[len(prefix) :] if value.startswith(prefix) and len(value) > len(prefix) else None


def _bad(status: int, body: Json) -> FakeResponse:
    return FakeResponse(status, body)


# --- the fake ---------------------------------------------------------------------------------


@attrs.define
class FakeChannels:
    """All channels in one. `tokens` optionally pins the credential each channel expects
    (`{"slack": "xoxb-1", "feishu": "<app secret>"}`); without it any non-empty one is accepted."""

    tokens: dict[str, str] = attrs.Factory(dict)
    feishu_token_expire: int = 7200
    requests: list[FakeRequest] = attrs.Factory(list)
    messages: list[Delivered] = attrs.Factory(list)
    _rules: dict[str, list[Rule]] = attrs.Factory(dict)
    _delays: dict[str, float] = attrs.Factory(dict)
    _seen: dict[tuple[str, str], Json] = attrs.Factory(dict)
    _feishu_tokens: dict[str, float] = attrs.Factory(dict)
    _dm_channels: dict[str, str] = attrs.Factory(dict)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    inbound: FakeInbound = attrs.Factory(FakeInbound)
    discord_gateway: FakeDiscordGateway = attrs.Factory(FakeDiscordGateway)
    slack_socket: FakeSlackSocket = attrs.Factory(FakeSlackSocket)
    feishu_socket: FakeFeishuSocket = attrs.Factory(FakeFeishuSocket)

    # --- commands ---

    def push(self, channel: str, text: str, *, sender: str | None = None, context_token: str | None = None,
             bot: bool = False) -> str:  # fmt: skip
        """A person writes to the bot: the next long poll of `channel` hears it, or the Discord
        gateway sends it (`sender`: the Discord channel id). Returns the platform's id for it."""
        if channel == "discord":
            return self.discord_gateway.push(text, sender, bot=bot)
        if channel == "slack":
            return self.slack_socket.push(text, sender, bot=bot)
        if channel == "feishu":
            return self.feishu_socket.push(text, sender, bot=bot)
        return self.inbound.push(channel, text, sender=sender, context_token=context_token, bot=bot)

    def drop_connection(self, channel: str) -> None:
        if channel == "discord":
            self.discord_gateway.drop_connection()
        elif channel == "slack":
            self.slack_socket.drop_connection()
        elif channel == "feishu":
            self.feishu_socket.drop_connection()
        else:
            self.inbound.drop_connection(channel)

    def reject_auth(self, channel: str) -> None:
        """Listening gets the platform's auth failure (WeChat errcode -14, Telegram 401, Discord
        close 4004) until `accept_auth`."""
        if channel == "discord":
            self.discord_gateway.reject_auth()
        elif channel == "slack":
            self.slack_socket.reject_auth()
        elif channel == "feishu":
            self.feishu_socket.reject_auth()
        else:
            self.inbound.reject_auth(channel)

    def accept_auth(self, channel: str | None = None) -> None:
        if channel in (None, "discord"):
            self.discord_gateway.accept_auth()
        if channel in (None, "slack"):
            self.slack_socket.accept_auth()
        if channel in (None, "feishu"):
            self.feishu_socket.accept_auth()
        self.inbound.accept_auth(channel)

    def connect_websocket(self, url: str) -> AbstractAsyncContextManager[Any]:
        """The socket listeners' connect seam: Slack's Socket Mode or Discord's gateway, by host."""
        if "slack.fake.invalid" in url:
            return self.slack_socket.connect(url)
        if "feishu-ws.fake.invalid" in url:
            return self.feishu_socket.connect(url)
        return self.discord_gateway.connect(url)

    def accept(self, channel: str | None = None) -> None:
        """Back to accepting everything promptly (one channel, or all)."""
        for table in (self._rules, self._delays):
            if channel is None:
                table.clear()
            else:
                table.pop(channel, None)

    def reject(
        self,
        channel: str,
        *,
        code: Json = None,
        status: int | None = None,
        message: str | None = None,
        times: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Reject sends with the channel's own error form (defaults: `REJECT_DEFAULTS`), the next
        `times` sends or, with None, until `accept()`."""
        self._add(channel, Rule("reject", times, status, code, message, retry_after))

    def fail(self, channel: str, times: int | None = 1, *, status: int = 503) -> None:
        """Answer the next `times` sends with a bare 5xx, as a load balancer in trouble would."""
        self._add(channel, Rule("fail", times, status))

    def rate_limit(self, channel: str, retry_after: float = 1.0, times: int | None = 1, *, code: Json = None) -> None:
        self._add(channel, Rule("rate_limit", times, code=code, retry_after=retry_after))

    def delay(self, channel: str, seconds: float) -> None:
        """Answer every request of this channel after `seconds` (trio time) until `accept()`."""
        self._delays[channel] = seconds

    def expire_feishu_tokens(self) -> None:
        """Revoke every tenant token issued so far: the next send gets code 99991663."""
        self._feishu_tokens.clear()

    def _add(self, channel: str, rule: Rule) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")
        self._rules.setdefault(channel, []).append(rule)

    # --- what arrived ---

    def delivered(self, channel: str | None = None) -> list[Delivered]:
        return [m for m in self.messages if channel is None or m.channel == channel]

    def requests_to(self, channel: str, op: str = "send") -> list[FakeRequest]:
        return [r for r in self.requests if r.channel == channel and r.op == op]

    # --- serving ---

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    async def handle(self, request: FakeRequest) -> FakeResponse:
        if request.path.startswith("/_fake/"):
            return self._control(request)
        found = route(request.path)
        if found is None:
            return _bad(404, {"error": f"no such endpoint {request.method} {request.path}"})
        channel, op, params = found
        request = attrs.evolve(request, at=trio.current_time(), channel=channel, op=op)
        self.requests.append(request)
        delay = self._delays.get(channel)
        if delay:
            await trio.sleep(delay)
        if op == "endpoint":
            body = request.body if isinstance(request.body, dict) else {}
            if not body.get("AppID") or not self._credential_ok("feishu", body.get("AppSecret")):
                return FakeResponse(200, {"code": 1000040344, "msg": "app_id or app_secret is invalid"})
            return FakeResponse(200, self.feishu_socket.endpoint_answer())
        if op == "connect":
            if not _bearer(request.headers):
                return FakeResponse(200, {"ok": False, "error": "not_authed"})
            return FakeResponse(200, self.slack_socket.connections_open_answer())
        if op == "gateway":
            if not self._credential_ok(channel, _bearer(request.headers, "Bot")) or self.discord_gateway.auth_rejected:
                return _bad(401, {"message": "401: Unauthorized", "code": 0})
            return FakeResponse(200, {"url": "wss://gateway.fake.invalid", "shards": 1})
        if request.method != "POST":
            return _bad(405, {"error": "method not allowed"})
        if op in INBOUND_OPS:
            return await self._listen(request, channel, op, params)
        if op == "send":
            ruled = self._apply_rule(channel)
            if ruled is not None:
                return ruled
        handler = self._handlers()[(channel, op)]
        return handler(request, params)

    def _apply_rule(self, channel: str) -> FakeResponse | None:
        rules = self._rules.get(channel)
        if not rules:
            return None
        rule = rules[0]
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                rules.pop(0)
        if rule.action == "reject":
            return rejection(channel, rule)
        if rule.action == "rate_limit":
            return rate_limited(channel, rule)
        return failure(rule)

    def _handlers(self) -> dict[tuple[str, str], Callable[[FakeRequest, dict[str, str]], FakeResponse]]:
        return {
            ("feishu", "token"): self._feishu_token,
            ("feishu", "send"): self._feishu_send,
            ("openclaw-weixin", "send"): self._weixin_send,
            ("slack", "send"): self._slack_send,
            ("discord", "dm"): self._discord_dm,
            ("discord", "send"): self._discord_send,
            ("telegram", "send"): self._telegram_send,
        }

    def _credential_ok(self, channel: str, given: str | None) -> bool:
        expected = self.tokens.get(channel)
        return bool(given) and (expected is None or given == expected)

    def _once(self, channel: str, key: str | None, delivered: Delivered, answer: Json) -> Json:
        """Record the message unless its key was seen; a repeat gets the first answer back."""
        if key is not None and (channel, key) in self._seen:
            return self._seen[(channel, key)]
        self.messages.append(delivered)
        if key is not None:
            self._seen[(channel, key)] = answer
        return answer

    def _next_id(self) -> str:
        return str(1_000_000_000_000_000_000 + next(self._ids))

    async def _listen(self, request: FakeRequest, channel: str, op: str, params: dict[str, str]) -> FakeResponse:
        if channel == "openclaw-weixin" and (
            request.headers.get("authorizationtype") != "ilink_bot_token"
            or not self._credential_ok(channel, _bearer(request.headers))
        ):
            return _bad(401, {"ret": -1, "errmsg": "unauthorized"})
        if channel == "telegram" and not self._credential_ok(channel, params["token"]):
            return _bad(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        answer = await self.inbound.handle(channel, op, request.body)
        return FakeResponse(answer.status, answer.body)

    # --- feishu ---

    def _feishu_token(self, request: FakeRequest, _: dict[str, str]) -> FakeResponse:
        body = request.body if isinstance(request.body, dict) else {}
        if not body.get("app_id") or not self._credential_ok("feishu", body.get("app_secret")):
            return _bad(400, {"code": 10014, "msg": "app secret invalid"})
        token = f"t-fake-{next(self._ids)}"
        self._feishu_tokens[token] = trio.current_time() + self.feishu_token_expire
        return FakeResponse(
            200, {"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.feishu_token_expire}
        )

    def _feishu_send(self, request: FakeRequest, _: dict[str, str]) -> FakeResponse:
        token = _bearer(request.headers)
        if token is None or self._feishu_tokens.get(token, -math.inf) <= trio.current_time():
            return _bad(400, {"code": FEISHU_TOKEN_INVALID, "msg": "Invalid access token for authorization"})
        body = request.body if isinstance(request.body, dict) else {}
        problem = _feishu_problem(request.query.get("receive_id_type"), body)
        if problem:
            return _bad(400, {"code": 99992402, "msg": f"field validation failed: {problem}"})
        text = json.loads(body["content"])["text"]
        answer = {"code": 0, "msg": "success", "data": {"message_id": f"om_{next(self._ids)}"}}
        uuid = body.get("uuid")
        return FakeResponse(
            200, self._once("feishu", uuid, Delivered("feishu", body["receive_id"], text, uuid), answer)
        )

    # --- openclaw-weixin ---

    def _weixin_send(self, request: FakeRequest, _: dict[str, str]) -> FakeResponse:
        headers = request.headers
        if headers.get("authorizationtype") != "ilink_bot_token" or not self._credential_ok(
            "openclaw-weixin", _bearer(headers)
        ):
            return _bad(401, {"ret": -1, "errmsg": "unauthorized"})
        msg = request.body.get("msg") if isinstance(request.body, dict) else None
        if not isinstance(msg, dict) or not msg.get("to_user_id") or not msg.get("item_list"):
            return _bad(400, {"ret": -1, "errcode": -2, "errmsg": "invalid msg"})
        text = msg["item_list"][0].get("text_item", {}).get("text", "")
        key = msg.get("client_id")
        delivered = Delivered("openclaw-weixin", msg["to_user_id"], text, key)
        return FakeResponse(200, self._once("openclaw-weixin", key, delivered, {"ret": 0}))

    # --- slack ---

    def _slack_send(self, request: FakeRequest, _: dict[str, str]) -> FakeResponse:
        if not self._credential_ok("slack", _bearer(request.headers)):
            return FakeResponse(200, {"ok": False, "error": "invalid_auth"})
        body = request.body if isinstance(request.body, dict) else {}
        if not body.get("channel"):
            return FakeResponse(200, {"ok": False, "error": "channel_not_found"})
        if not body.get("text"):
            return FakeResponse(200, {"ok": False, "error": "no_text"})
        self.messages.append(Delivered("slack", body["channel"], body["text"]))
        return FakeResponse(200, {"ok": True, "channel": body["channel"], "ts": f"{next(self._ids)}.000100"})

    # --- discord ---

    def _discord_dm(self, request: FakeRequest, _: dict[str, str]) -> FakeResponse:
        if not self._credential_ok("discord", _bearer(request.headers, "Bot")):
            return _bad(401, {"message": "401: Unauthorized", "code": 0})
        recipient = request.body.get("recipient_id") if isinstance(request.body, dict) else None
        if not isinstance(recipient, str) or not recipient.isdigit():
            return _bad(400, {"message": "Invalid Form Body", "code": 50035})
        channel_id = self._dm_channels.setdefault(recipient, self._next_id())
        return FakeResponse(200, {"id": channel_id, "type": 1, "recipients": [{"id": recipient}]})

    def _discord_send(self, request: FakeRequest, params: dict[str, str]) -> FakeResponse:
        if not self._credential_ok("discord", _bearer(request.headers, "Bot")):
            return _bad(401, {"message": "401: Unauthorized", "code": 0})
        body = request.body if isinstance(request.body, dict) else {}
        nonce = body.get("nonce")
        if not body.get("content") or (nonce is not None and len(str(nonce)) > 25):
            return _bad(400, {"message": "Invalid Form Body", "code": 50035})
        channel_id = params["id"]
        users = {cid: uid for uid, cid in self._dm_channels.items()}
        to = f"user:{users[channel_id]}" if channel_id in users else f"channel:{channel_id}"
        answer = {"id": self._next_id(), "channel_id": channel_id, "content": body["content"], "nonce": nonce}
        key = f"{channel_id}/{nonce}" if nonce is not None and body.get("enforce_nonce") else None
        return FakeResponse(200, self._once("discord", key, Delivered("discord", to, body["content"], nonce), answer))

    # --- telegram ---

    def _telegram_send(self, request: FakeRequest, params: dict[str, str]) -> FakeResponse:
        if not self._credential_ok("telegram", params["token"]):
            return _bad(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        body = request.body if isinstance(request.body, dict) else {}
        if body.get("chat_id") in (None, "") or not body.get("text"):
            return _bad(400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"})
        chat = body["chat_id"]
        self.messages.append(Delivered("telegram", str(chat), body["text"]))
        result = {"message_id": next(self._ids), "chat": {"id": chat}, "text": body["text"]}
        return FakeResponse(200, {"ok": True, "result": result})

    # --- control over HTTP (for a fake in another process) ---

    def _control(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/_fake/requests":
            return FakeResponse(200, [_request_json(r) for r in self.requests])
        if request.path == "/_fake/messages":
            return FakeResponse(200, [attrs.asdict(m) for m in self.messages])
        if request.path == "/_fake/control" and isinstance(request.body, dict):
            return self._command(dict(request.body))
        return _bad(404, {"error": "unknown control endpoint"})

    def _command(self, body: dict[str, Json]) -> FakeResponse:
        commands: dict[str, Callable[..., object]] = {
            "accept": self.accept,
            "reject": self.reject,
            "fail": self.fail,
            "rate_limit": self.rate_limit,
            "delay": self.delay,
            "expire_feishu_tokens": self.expire_feishu_tokens,
            "push": self.push,
            "drop_connection": self.drop_connection,
            "reject_auth": self.reject_auth,
            "accept_auth": self.accept_auth,
        }
        command = commands.get(body.pop("action", ""))
        if command is None:
            return _bad(400, {"error": f"action must be one of {', '.join(commands)}"})
        try:
            command(**body)
        except (TypeError, ValueError) as exc:
            return _bad(400, {"error": str(exc)})
        return FakeResponse(200, {"ok": True})

    # --- ASGI, for a real loopback server ---

    async def asgi(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = dict(urllib.parse.parse_qsl(scope["query_string"].decode("latin-1")))
        request = FakeRequest(scope["method"], scope["path"], query, headers, _parse(b"".join(chunks)))
        response: FakeResponse | None = None
        # hypercorn does not cancel a handler whose client went away: watch for it, so a held
        # long poll ends (and is recorded as closed) the moment the gateway hangs up.
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            try:
                response = await self.handle(request)
            except Dropped as exc:
                response = _bad(502, {"error": str(exc)})
            nursery.cancel_scope.cancel()
        if response is not None:
            await _respond(send, response)


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _feishu_problem(receive_id_type: str | None, body: dict[str, Json]) -> str | None:
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


def _parse(raw: bytes) -> Json:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _request_json(r: FakeRequest) -> dict[str, Json]:
    return {"channel": r.channel, "op": r.op, "method": r.method, "path": r.path, "query": dict(r.query),
            "headers": dict(r.headers), "body": r.body, "at": r.at}  # fmt: skip


async def _respond(send: Send, response: FakeResponse) -> None:
    content = response.encode()
    headers = {"content-type": "application/json", **{k.lower(): v for k, v in response.headers.items()}}
    raw_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": response.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": content})


class FakeTransport(http.AsyncBaseTransport):
    """The fake as an httpx transport: requests never touch a socket."""

    def __init__(self, fakes: FakeChannels) -> None:
        self.fakes = fakes

    async def handle_async_request(self, request: http.Request) -> http.Response:
        raw = await request.aread()
        headers = {k.lower(): v for k, v in request.headers.items()}
        fake = FakeRequest(request.method, request.url.path, dict(request.url.params), headers, _parse(raw))
        try:
            response = await self.fakes.handle(fake)
        except Dropped as exc:
            raise http.RemoteProtocolError(str(exc), request=request) from None
        wire_headers = {"content-type": "application/json", **response.headers}
        return http.Response(response.status, headers=wire_headers, content=response.encode(), request=request)


async def serve_fake_channels(
    fakes: FakeChannels | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `fakes` on loopback until cancelled; `await nursery.start(...)` gives its base URL."""
    import hypercorn.config
    import hypercorn.trio

    config = hypercorn.config.Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.loglevel = "WARNING"
    app: Any = (fakes or FakeChannels()).asgi  # hypercorn types scopes as TypedDicts; ours is plain
    async with trio.open_nursery() as nursery:
        serve = functools.partial(hypercorn.trio.serve, app, config, shutdown_trigger=trio.sleep_forever)
        urls: list[str] = await nursery.start(serve)
        task_status.started(urls[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trio_gateway.sim.fake_channels", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--token", action="append", default=[], metavar="CHANNEL=VALUE", help="pin a credential")
    args = parser.parse_args(argv)
    tokens = dict(t.split("=", 1) for t in args.token)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(
                functools.partial(serve_fake_channels, FakeChannels(tokens), host=args.host, port=args.port)
            )
            print(url, flush=True)

    try:
        trio.run(run)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
