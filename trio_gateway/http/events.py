"""`GET /v1/events`: server-sent events for the Control UI (SPEC 13).

Two kinds of event on one stream: `status` (a snapshot of what `GET /v1/status` says, plus the
last drains and the settings a page needs to draw a countdown) and `log` (each log event since
the last tick, from a bounded in-memory tail of the gateway's log).

At scale (issue 25: 20 pages x 5,000 sessions kept a core at 92 %): one `Snapshots` serves
every stream, computing and serialising the snapshot at most once per `interval`, and a stream
sends it only when it changed (the clock alone moving is no change; the page runs its clocks);
log lines are encoded once. At most `MAX_STREAMS` streams are open (one more gets 503), and each
stream re-checks its login at every tick: a page whose session logged out stops hearing.

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
# Open streams at once: each holds a connection and a task; one more is refused with 503.
MAX_STREAMS = 256
# Keys of the snapshot that move with the clock alone: a change of only these is not sent.
_CLOCK_KEYS = ("now", "uptimeSeconds")
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
    # backslashreplace: a lone surrogate that got into state anyway must not end every stream.
    return f"event: {event}\ndata: {text}\n\n".encode("utf-8", "backslashreplace")


STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),
)


@attrs.define(eq=False)
class Snapshots:
    """What every stream sends, made once: the status snapshot (recomputed at most once per
    `interval`, numbered anew only when it changed beyond the clock) and the encoded log lines."""

    snapshot: Callable[[], dict[str, Any]]
    tail: LogTail
    interval: float = _STATUS_INTERVAL_SECONDS
    open_streams: int = 0
    version: int = 0
    _encoded: bytes = b""
    _key: bytes | None = None
    _made_at: float = -1.0
    _lines: dict[int, bytes] = attrs.Factory(dict)

    def status(self) -> tuple[int, bytes]:
        """(version, the encoded `status` event) as of this tick."""
        now = trio.current_time()
        if self._key is None or now - self._made_at >= self.interval:
            self._made_at = now
            snapshot = self.snapshot()
            key = json.dumps({k: v for k, v in snapshot.items() if k not in _CLOCK_KEYS}, default=str).encode()
            if key != self._key:
                self._key, self.version = key, self.version + 1
                self._encoded = encode("status", snapshot)
        return self.version, self._encoded

    def log_since(self, seen: int) -> tuple[int, list[bytes]]:
        """(the last number sent, the encoded `log` events after `seen`)."""
        chunks = []
        for number, event in self.tail.since(seen):
            line = self._lines.get(number)
            if line is None:
                line = self._lines[number] = encode("log", event.json())  # as `--log-format json`
            chunks.append(line)
            seen = number
        if len(self._lines) > 2 * _TAIL_EVENTS:  # the tail forgot the older ones: so do we
            first = self.tail.last_number() - _TAIL_EVENTS
            self._lines = {n: line for n, line in self._lines.items() if n > first}
        return seen, chunks


@attrs.define(eq=False)
class EventStream:
    shared: Snapshots
    stopped: Callable[[], Any]  # awaitable factory: returns when the gateway has stopped
    # The login this stream was opened with still holds (checked at every tick).
    allowed: Callable[[], bool] = lambda: True

    async def run(self, receive: Receive, send: Send) -> None:
        # Counted while it runs (a stream whose headers never went out never runs, and must
        # not hold a place); the route refuses one more past MAX_STREAMS before it starts.
        self.shared.open_streams += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._until_disconnect, receive, nursery.cancel_scope)
                nursery.start_soon(self._until_stopped, nursery.cancel_scope)
                await self._pump(send)
                nursery.cancel_scope.cancel(reason="the stream's login no longer holds")
            # The body ends either way; to a client that left, hypercorn drops it.
            with trio.move_on_after(1, shield=True):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.shared.open_streams -= 1

    async def _pump(self, send: Send) -> None:
        seen = max(0, self.shared.tail.last_number() - _BACKLOG_EVENTS)
        sent_version = -1
        # A comment line first: proxies and browsers see the stream open at once.
        await send({"type": "http.response.body", "body": b": trio-gateway events\n\n", "more_body": True})
        while self.allowed():
            seen, chunks = self.shared.log_since(seen)
            version, status = self.shared.status()
            if version != sent_version:
                chunks.append(status)
                sent_version = version
            if chunks:
                await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": True})
            await trio.sleep(self.shared.interval)

    @staticmethod
    async def _until_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        scope.cancel(reason="client disconnected")

    async def _until_stopped(self, scope: trio.CancelScope) -> None:
        await self.stopped()
        scope.cancel(reason="gateway stopped")
