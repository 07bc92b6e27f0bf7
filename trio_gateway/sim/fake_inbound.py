"""The listening side the fake platforms share (SPEC 11): the long-poll server the WeChat and
Telegram fakes keep their messages in (`FakeInbound`), and the websocket plumbing of the socket
fakes (`SteerableSocket`, `in_memory_websocket`). What a message looks like and how a poll is
answered is each platform's, in `fake_weixin.py` and `fake_telegram.py`; steered through
`FakeChannels`:

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

import collections
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio
import trio.testing
import trio_websocket

Json = Any
# The most messages one poll answers with.
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
            # As `trio_websocket.open_websocket` on a normal exit: a close frame (code 1000),
            # which a fake may give a meaning (Discord ends the session).
            with trio.move_on_after(1.0):
                await ws.aclose()
        finally:
            nursery.cancel_scope.cancel()


@attrs.frozen
class Speech:
    """How a pushed message is said (SPEC 15): who writes it, in which chat, and whether it
    addresses the bot. The default is a person's direct message of plain text."""

    # The group chat's id on the platform (Telegram a negative chat id, Slack/Discord a
    # channel id, Feishu an `oc_` chat id, WeChat a `group_id`); None: a direct message.
    group: str | None = None
    # Who writes, in a group (default: the platform's usual person, or `sender`).
    user: str | None = None
    mention: bool = False  # it mentions the bot (`@bot`, `<@BOT>`, a Feishu `mentions` entry)
    reply_to_bot: bool = False  # it replies to one of the bot's messages
    media: bool = False  # an image; its text, if any, is the caption
    thread: str | None = None  # the platform thread it sits in (Slack `thread_ts`, Telegram topic)
    edited: bool = False  # an edit of an earlier message (Telegram `edited_message`)
    service: bool = False  # a service message (a member joined): no text at all


DIRECT = Speech()


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

    def push(self, text: str, sender: str | None = None, *, bot: bool = False, speech: Speech = DIRECT) -> str:
        """A person (or, with `bot`, a bot) writes `text` in conversation `sender`, as `speech`
        says (a group, a mention of the bot, a photo: SPEC 15); returns the platform's id."""
        raise NotImplementedError

    def connect(self, url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        """The listener's websocket seam: a connection to this fake over in-memory streams."""
        raise NotImplementedError

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
class FakeInbound:
    # Every message ever pushed, per channel, in order: its index is the cursor.
    log: dict[str, list[dict[str, Json]]] = attrs.Factory(lambda: collections.defaultdict(list))
    auth_rejected: set[str] = attrs.Factory(set)
    polls_open: dict[str, int] = attrs.Factory(lambda: collections.defaultdict(int))
    # trio time each poll ended because its client went away (cancelled or disconnected).
    closed_at: list[float] = attrs.Factory(list)
    notified: list[tuple[str, str]] = attrs.Factory(list)  # (channel, "start" | "stop")
    _changed: trio.Event = attrs.Factory(trio.Event)
    _drops: dict[str, int] = attrs.Factory(lambda: collections.defaultdict(int))
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # --- steering ---

    def serial(self) -> int:
        """The next message number, shared by the long-poll platforms."""
        return next(self._ids)

    def add(self, channel: str, message: dict[str, Json]) -> None:
        """A message for the next poll of `channel`."""
        self.log[channel].append(message)
        self._wake()

    def drop_connection(self, channel: str) -> None:
        """Every poll of `channel` in flight ends with a broken connection."""
        self._drops[channel] += 1
        self._wake()

    def reject_auth(self, channel: str) -> None:
        self.auth_rejected.add(channel)
        self.drop_connection(channel)

    def accept_auth(self, channel: str) -> None:
        self.auth_rejected.discard(channel)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- serving ---

    async def hold(
        self, channel: str, ready: Callable[[], list[dict[str, Json]]], seconds: float
    ) -> list[dict[str, Json]]:
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
