"""The listening side of the fake platforms (SPEC 11): long-poll servers for WeChat
(`getupdates`, `notifystart`, `notifystop`) and Telegram (`getUpdates`), steerable:

    fakes.push("openclaw-weixin", "hello", sender="u1@im.wechat")   # a person writes
    fakes.drop_connection("openclaw-weixin")                         # polls in flight break
    fakes.reject_auth("openclaw-weixin")                             # errcode -14 / HTTP 401
    fakes.accept_auth("openclaw-weixin")

Messages are kept, and a poll with an old cursor reads them again, as the platforms do: that is
how a test shows a re-read message is not answered twice. Waits are trio waits, so MockClock
tests run instantly; `polls_open` and `closed_at` let a test or benchmark see when the gateway's
long poll ended (its connection closed).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

Json = Any
WEIXIN = "openclaw-weixin"
TELEGRAM = "telegram"
INBOUND_CHANNELS = (WEIXIN, TELEGRAM)
# Channels whose listening side the fakes serve: the long polls here, Discord's gateway in
# fake_discord.py, Slack's Socket Mode in fake_slack.py, Feishu's long connection in fake_feishu.py.
LISTENING_FAKES = (WEIXIN, TELEGRAM, "discord", "slack", "feishu")
# How long a poll is held with nothing to say (the platforms' own figures).
WEIXIN_HOLD_MS = 35_000
BATCH = 100


@asynccontextmanager
async def in_memory_websocket(
    host: str, resource: str, serve: Callable[[trio.Nursery, trio.abc.Stream], Awaitable[None]]
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """A real trio-websocket client connection whose server is `serve`, over in-memory streams:
    no sockets, so a fake's heartbeats and drops run on the MockClock."""
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve, nursery, server)
        ws = await trio_websocket.wrap_client_stream(nursery, client, host, resource)  # type: ignore[arg-type]
        try:
            yield ws
        finally:
            nursery.cancel_scope.cancel()


@attrs.define
class SteerableSocket:
    """What the websocket fakes share: drop the connection, refuse the credentials."""

    auth_rejected: bool = False
    connections: int = 0
    connections_open: int = 0
    _changed: trio.Event = attrs.Factory(trio.Event)
    _drops: int = 0

    async def _serve(self, nursery: trio.Nursery, stream: trio.abc.Stream) -> None:
        """One connection: `_read` what the client sends while `_stream` sends to it."""
        ws = await (await trio_websocket.wrap_server_stream(nursery, stream)).accept()
        self.connections += 1
        self.connections_open += 1
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(self._read, ws)
                await self._stream(ws, stream)
                inner.cancel_scope.cancel()
        except trio_websocket.ConnectionClosed:
            pass
        finally:
            self.connections_open -= 1

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        raise NotImplementedError

    async def _stream(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        raise NotImplementedError

    def drop_connection(self) -> None:
        """The live connection dies without a close frame (the client sees 1006)."""
        self._drops += 1
        self._wake()

    def reject_auth(self) -> None:
        self.auth_rejected = True
        self.drop_connection()

    def accept_auth(self) -> None:
        self.auth_rejected = False

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class Dropped(Exception):
    """The fake drops the connection: in-process a transport error, on loopback a 502."""


@attrs.define
class InboundAnswer:
    status: int
    body: Json


@attrs.define
class FakeInbound:
    # Every message ever pushed, per channel, in order: its index is the cursor.
    log: dict[str, list[dict[str, Json]]] = attrs.Factory(lambda: {c: [] for c in INBOUND_CHANNELS})
    auth_rejected: set[str] = attrs.Factory(set)
    polls_open: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(INBOUND_CHANNELS, 0))
    # trio time each poll ended because its client went away (cancelled or disconnected).
    closed_at: list[float] = attrs.Factory(list)
    notified: list[tuple[str, str]] = attrs.Factory(list)  # (channel, "start" | "stop")
    weixin_hold_ms: int = WEIXIN_HOLD_MS
    _changed: trio.Event = attrs.Factory(trio.Event)
    _drops: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(INBOUND_CHANNELS, 0))
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # --- steering ---

    def push(
        self,
        channel: str,
        text: str,
        *,
        sender: str | None = None,
        context_token: str | None = None,
        bot: bool = False,
    ) -> str:
        """A person (or, with `bot`, a bot) writes `text`; returns the platform's message id."""
        n = next(self._ids)
        if channel == WEIXIN:
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
            ident = str(message["message_id"])
        elif channel == TELEGRAM:
            chat = int(sender) if sender and sender.lstrip("-").isdigit() else 4242
            message = {
                "update_id": 90_000 + n,
                "message": {
                    "message_id": n,
                    "from": {"id": chat, "is_bot": bot, "first_name": "Tess"},
                    "chat": {"id": chat, "type": "private"},
                    "date": 1_700_000_000 + n,
                    "text": text,
                },
            }
            ident = str(message["update_id"])
        else:
            raise ValueError(f"no inbound fake for channel {channel!r}; known: {', '.join(INBOUND_CHANNELS)}")
        self.log[channel].append(message)
        self._wake()
        return ident

    def drop_connection(self, channel: str) -> None:
        """Every poll of `channel` in flight ends with a broken connection."""
        self._drops[channel] = self._drops.get(channel, 0) + 1
        self._wake()

    def reject_auth(self, channel: str) -> None:
        self.auth_rejected.add(channel)
        self.drop_connection(channel)

    def accept_auth(self, channel: str | None = None) -> None:
        if channel is None:
            self.auth_rejected.clear()
        else:
            self.auth_rejected.discard(channel)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- serving ---

    async def handle(self, channel: str, op: str, body: Json) -> InboundAnswer:
        if channel == WEIXIN:
            if channel in self.auth_rejected:
                return InboundAnswer(200, {"ret": -14, "errcode": -14, "errmsg": "session expired"})
            if op in ("notifystart", "notifystop"):
                self.notified.append((channel, op.removeprefix("notify")))
                return InboundAnswer(200, {"ret": 0})
            return await self._weixin_poll(body if isinstance(body, dict) else {})
        if channel in self.auth_rejected:
            return InboundAnswer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
        return await self._telegram_poll(body if isinstance(body, dict) else {})

    async def _weixin_poll(self, body: dict[str, Json]) -> InboundAnswer:
        buf = body.get("get_updates_buf") or "0"
        start = int(buf) if isinstance(buf, str) and buf.isdigit() else 0
        batch = await self._hold(WEIXIN, lambda: self.log[WEIXIN][start : start + BATCH], self.weixin_hold_ms / 1000)
        return InboundAnswer(
            200,
            {"ret": 0, "msgs": batch, "get_updates_buf": str(start + len(batch)),
             "longpolling_timeout_ms": self.weixin_hold_ms},
        )  # fmt: skip

    async def _telegram_poll(self, body: dict[str, Json]) -> InboundAnswer:
        offset = body.get("offset")
        first = offset if isinstance(offset, int) else 0
        timeout = body.get("timeout")
        hold = float(timeout) if isinstance(timeout, (int, float)) else 0.0

        def due() -> list[dict[str, Json]]:
            return [u for u in self.log[TELEGRAM] if u["update_id"] >= first][:BATCH]

        return InboundAnswer(200, {"ok": True, "result": await self._hold(TELEGRAM, due, hold)})

    async def _hold(self, channel: str, ready: Any, seconds: float) -> list[dict[str, Json]]:
        """Answer at once when `ready()` has messages, else when one arrives or `seconds` pass."""
        drops = self._drops[channel]
        self.polls_open[channel] += 1
        try:
            with trio.move_on_after(seconds):
                while not ready():
                    await self._changed.wait()
                    if self._drops[channel] != drops:
                        raise Dropped(f"{channel}: connection dropped by the fake")
            return list(ready())
        except trio.Cancelled:
            # The client went away mid-poll: its connection is closed as of now.
            self.closed_at.append(trio.current_time())
            raise
        finally:
            self.polls_open[channel] -= 1
