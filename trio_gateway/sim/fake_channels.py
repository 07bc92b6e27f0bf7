"""Fake channel servers: one object that speaks every supported channel's API, records each
request, deduplicates by the idempotency key where the real platform does, and accepts, rejects,
fails, rate-limits or answers slowly on command. What each platform answers lives in its own
`fake_<platform>.py` (a `PlatformFake`); this module routes to them and keeps what they share.

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
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.http.asgi import lifespan
from trio_gateway.sim.fake_discord import DiscordFake, FakeDiscordGateway
from trio_gateway.sim.fake_feishu import FakeFeishuSocket, FeishuFake
from trio_gateway.sim.fake_inbound import Dropped, FakeInbound
from trio_gateway.sim.fake_platform import (
    DIRECT,
    Delivered,
    FakeRequest,
    FakeResponse,
    Json,
    PlatformFake,
    Rule,
    Speech,
    bad,
)
from trio_gateway.sim.fake_slack import FakeSlackSocket, SlackFake
from trio_gateway.sim.fake_telegram import TelegramFake
from trio_gateway.sim.fake_weixin import WeixinFake

__all__ = ["Delivered", "FakeChannels", "FakeRequest", "FakeResponse", "Rule", "Speech", "serve_fake_channels"]

# Every platform the fake speaks: one `fake_<platform>.py` each.
PLATFORMS: tuple[type[PlatformFake], ...] = (FeishuFake, WeixinFake, SlackFake, DiscordFake, TelegramFake)
CHANNELS = tuple(platform.name for platform in PLATFORMS)


def platform_fake(channel: str) -> type[PlatformFake]:
    """The fake of the platform `gateway.json` calls `channel`."""
    for platform in PLATFORMS:
        if platform.name == channel:
            return platform
    raise ValueError(f"unknown channel {channel!r}; known: {', '.join(CHANNELS)}")


# Channels whose listening side the fakes serve (`push`, `drop_connection`): every one.
LISTENING_FAKES = CHANNELS
# (path pattern, channel, operation), from every platform's routes.
ROUTES: list[tuple[re.Pattern[str], str, str]] = [
    (pattern, platform.name, op) for platform in PLATFORMS for pattern, op in platform.routes
]


def route(path: str) -> tuple[str, str, dict[str, str]] | None:
    for pattern, channel, op in ROUTES:
        match = pattern.search(path)
        if match:
            return channel, op, match.groupdict()
    return None


def failure(rule: Rule) -> FakeResponse:
    return FakeResponse(rule.status or 503, b"Service Unavailable", {"content-type": "text/plain"})


# --- the fake ---------------------------------------------------------------------------------


_P = TypeVar("_P", bound=PlatformFake)


def _platforms() -> dict[str, PlatformFake]:
    return {platform.name: platform() for platform in PLATFORMS}


@attrs.define
class FakeChannels:
    """All channels in one. `tokens` optionally pins the credential each channel expects
    (`{"slack": "xoxb-1", "feishu": "<app secret>"}`); without it any non-empty one is accepted."""

    tokens: dict[str, str] = attrs.Factory(dict)
    requests: list[FakeRequest] = attrs.Factory(list)
    messages: list[Delivered] = attrs.Factory(list)
    platforms: dict[str, PlatformFake] = attrs.Factory(_platforms)
    inbound: FakeInbound = attrs.Factory(FakeInbound)
    _rules: dict[str, list[Rule]] = attrs.Factory(dict)
    _delays: dict[str, float] = attrs.Factory(dict)
    _seen: dict[tuple[str, str], Json] = attrs.Factory(dict)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # The socket fakes by name, for tests that steer one directly.
    @property
    def discord_gateway(self) -> FakeDiscordGateway:
        return self._platform(DiscordFake).socket

    @property
    def slack_socket(self) -> FakeSlackSocket:
        return self._platform(SlackFake).socket

    @property
    def feishu_socket(self) -> FakeFeishuSocket:
        return self._platform(FeishuFake).socket

    def _platform(self, kind: type[_P]) -> _P:
        found = self.platforms[kind.name]
        assert isinstance(found, kind)
        return found

    def platform(self, channel: str) -> PlatformFake:
        found = self.platforms.get(channel)
        if found is None:
            raise ValueError(f"unknown channel {channel!r}; known: {', '.join(self.platforms)}")
        return found

    # --- commands ---

    def push(self, channel: str, text: str, *, sender: str | None = None, context_token: str | None = None,
             bot: bool = False, speech: Speech = DIRECT) -> str:  # fmt: skip
        """A person writes to the bot: the next long poll of `channel` hears it, or its socket
        sends it (`sender`: the conversation, e.g. the Discord channel id; `speech`: in a group,
        mentioning the bot, a photo... SPEC 15). Returns the platform's id for it."""
        return self.platform(channel).push(self, text, sender, context_token, bot, speech)

    def drop_connection(self, channel: str) -> None:
        self.platform(channel).drop_connection(self)

    def reject_auth(self, channel: str) -> None:
        """Listening gets the platform's auth failure (WeChat errcode -14, Telegram 401, Discord
        close 4004) until `accept_auth`."""
        self.platform(channel).reject_auth(self)

    def accept_auth(self, channel: str | None = None) -> None:
        for platform in self.platforms.values() if channel is None else [self.platform(channel)]:
            platform.accept_auth(self)

    def connect_websocket(self, url: str) -> AbstractAsyncContextManager[Any]:
        """The socket listeners' connect seam: the platform whose websocket host the URL names."""
        for platform in self.platforms.values():
            if platform.websocket_host is not None and platform.websocket_host in url:
                return platform.connect(url)
        raise ValueError(f"no fake websocket at {url}")

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
        """Reject sends with the channel's own error form (defaults: its `reject_default`), the
        next `times` sends or, with None, until `accept()`."""
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
        self._platform(FeishuFake).expire_tokens()

    def _add(self, channel: str, rule: Rule) -> None:
        self.platform(channel)  # refuses an unknown channel
        self._rules.setdefault(channel, []).append(rule)

    # --- what arrived ---

    def delivered(self, channel: str | None = None) -> list[Delivered]:
        return [m for m in self.messages if channel is None or m.channel == channel]

    def requests_to(self, channel: str, op: str = "send") -> list[FakeRequest]:
        return [r for r in self.requests if r.channel == channel and r.op == op]

    # --- what the platform fakes share (`fake_platform.FakeServer`) ---

    def credential_ok(self, channel: str, given: str | None) -> bool:
        expected = self.tokens.get(channel)
        return bool(given) and (expected is None or given == expected)

    def once(self, channel: str, key: str | None, delivered: Delivered, answer: Json) -> Json:
        """Record the message unless its key was seen; a repeat gets the first answer back."""
        if key is not None and (channel, key) in self._seen:
            return self._seen[(channel, key)]
        self.messages.append(delivered)
        if key is not None:
            self._seen[(channel, key)] = answer
        return answer

    def serial(self) -> int:
        return next(self._ids)

    def next_id(self) -> str:
        return str(1_000_000_000_000_000_000 + next(self._ids))

    # --- serving ---

    def transport(self) -> FakeTransport:
        return FakeTransport(self)

    async def handle(self, request: FakeRequest) -> FakeResponse:
        if request.path.startswith("/_fake/"):
            return self._control(request)
        found = route(request.path)
        if found is None:
            return bad(404, {"error": f"no such endpoint {request.method} {request.path}"})
        channel, op, params = found
        platform = self.platforms[channel]
        request = attrs.evolve(request, at=trio.current_time(), channel=channel, op=op)
        self.requests.append(request)
        delay = self._delays.get(channel)
        if delay:
            await trio.sleep(delay)
        early = await platform.answer_any_method(self, request, op, params)
        if early is not None:
            return early
        if request.method != "POST":
            return bad(405, {"error": "method not allowed"})
        if op == "send":
            ruled = self._apply_rule(platform)
            if ruled is not None:
                return ruled
        return await platform.answer(self, request, op, params)

    def _apply_rule(self, platform: PlatformFake) -> FakeResponse | None:
        rules = self._rules.get(platform.name)
        if not rules:
            return None
        rule = rules[0]
        if rule.remaining is not None:
            rule.remaining -= 1
            if rule.remaining <= 0:
                rules.pop(0)
        if rule.action == "reject":
            return platform.rejection(rule)
        if rule.action == "rate_limit":
            return platform.rate_limited(rule)
        return failure(rule)

    # --- control over HTTP (for a fake in another process) ---

    def _control(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/_fake/requests":
            return FakeResponse(200, [_request_json(r) for r in self.requests])
        if request.path == "/_fake/messages":
            return FakeResponse(200, [attrs.asdict(m) for m in self.messages])
        if request.path == "/_fake/control" and isinstance(request.body, dict):
            return self._command(dict(request.body))
        return bad(404, {"error": "unknown control endpoint"})

    def _command(self, body: dict[str, Json]) -> FakeResponse:
        commands: dict[str, Callable[..., object]] = {
            "accept": self.accept,
            "reject": self.reject,
            "fail": self.fail,
            "rate_limit": self.rate_limit,
            "delay": self.delay,
            "expire_feishu_tokens": self.expire_feishu_tokens,
            "push": self._push_json,
            "drop_connection": self.drop_connection,
            "reject_auth": self.reject_auth,
            "accept_auth": self.accept_auth,
        }
        command = commands.get(body.pop("action", ""))
        if command is None:
            return bad(400, {"error": f"action must be one of {', '.join(commands)}"})
        try:
            command(**body)
        except (TypeError, ValueError) as exc:
            return bad(400, {"error": str(exc)})
        return FakeResponse(200, {"ok": True})

    def _push_json(self, channel: str, text: str, *, speech: dict[str, Json] | None = None, **rest: Any) -> str:
        """`push` over HTTP: `speech` as a JSON object of `Speech`'s fields."""
        return self.push(channel, text, speech=Speech(**speech) if speech else DIRECT, **rest)

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
                response = bad(502, {"error": str(exc)})
            nursery.cancel_scope.cancel()
        if response is not None:
            await _respond(send, response)


Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


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
