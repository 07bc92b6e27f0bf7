"""`GET /v1/events`: server-sent events for the Control UI (SPEC 13).

Two kinds of event on one stream: `status` (a snapshot of what `GET /v1/status` says, plus the
last drains and the settings a page needs to draw a countdown, every `interval` seconds) and
`log` (each log event since the last tick, from a bounded in-memory tail of the gateway's log).

hypercorn does not cancel a handler whose client has gone, so the stream watches `receive()`
for `http.disconnect` and ends itself; it also ends when the gateway stops, so an open page
never holds a stop up.
"""

from __future__ import annotations

import collections
import itertools
import json
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_gateway.http.asgi import Receive, Send
from trio_gateway.log import Event

# How often a page gets a fresh snapshot: a countdown bar animates between them by itself.
_STATUS_INTERVAL_SECONDS = 0.5
_TAIL_EVENTS = 200
# Events a page gets when it connects, so it does not start on an empty log.
_BACKLOG_EVENTS = 50


@attrs.define(eq=False)
class LogTail:
    """A log sink that keeps the last events, numbered, for the streams to read.

    Appending to a bounded deque is safe from any thread, and the streams poll it at their
    tick: no cross-thread wake-up to get wrong. An event is only formatted when a stream sends
    it, so with no page open the log pays one append per line."""

    events: collections.deque[tuple[int, Event]] = attrs.Factory(lambda: collections.deque(maxlen=_TAIL_EVENTS))
    _numbers: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def write(self, event: Event) -> None:
        self.events.append((next(self._numbers), event))

    def since(self, seen: int) -> list[tuple[int, Event]]:
        return [(n, e) for n, e in list(self.events) if n > seen]

    def last_number(self) -> int:
        snapshot = list(self.events)
        return snapshot[-1][0] if snapshot else 0


def encode(event: str, data: object) -> bytes:
    """One SSE message. JSON never contains a raw newline, so one `data:` line suffices."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, default=str)
    return f"event: {event}\ndata: {text}\n\n".encode()


STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


@attrs.define(eq=False)
class EventStream:
    snapshot: Callable[[], dict[str, Any]]
    tail: LogTail
    stopped: Callable[[], Any]  # awaitable factory: returns when the gateway has stopped
    interval: float = _STATUS_INTERVAL_SECONDS

    async def run(self, receive: Receive, send: Send) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
            nursery.start_soon(self._until_stopped, nursery.cancel_scope)
            await self._pump(send)
        # The body ends either way; to a client that left, hypercorn drops it.
        with trio.move_on_after(1, shield=True):
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        seen = max(0, self.tail.last_number() - _BACKLOG_EVENTS)
        # A comment line first: proxies and browsers see the stream open at once.
        await send({"type": "http.response.body", "body": b": trio-gateway events\n\n", "more_body": True})
        while True:
            chunks = []
            for number, event in self.tail.since(seen):
                chunks.append(encode("log", event.json()))  # a JSON log line, as `--log-format json`
                seen = number
            chunks.append(encode("status", self.snapshot()))
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
            await trio.sleep(self.interval)

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel(reason="client disconnected")

    async def _until_stopped(self, scope: trio.CancelScope) -> None:
        await self.stopped()
        scope.cancel(reason="gateway stopped")
