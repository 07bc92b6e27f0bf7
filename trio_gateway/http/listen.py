"""Accepting connections with a cap: hypercorn's HTTP protocol code, our own accept loop.

hypercorn accepts every connection it is offered (3,000 idle sockets were all accepted, each
holding memory and a file descriptor) and has no setting to cap them. So the gateway runs the
loop that `hypercorn.trio.serve` would run (listen, `trio.serve_listeners`, one hypercorn
`TCPServer` per connection) with a `ConnectionCap` in front: a connection beyond
`gateway.maxConnections` is closed at once, and the ones already open keep being served. At
shutdown every connection still open is closed by us: hypercorn writes each response inside a
shield with no deadline, so a client that stops reading would otherwise hold the stop forever;
while running, each chunk of a response must be taken within `SEND_STALL_SECONDS` (a deadline
of our own inside that shield), or the connection is closed and its slot freed.
Plain HTTP only (the gateway binds loopback or sits behind a TLS proxy), no lifespan (the app
owns nothing).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs
import hypercorn.config
import trio
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.utils import repr_socket_addr, wrap_app
from trio_util import AsyncValue

from trio_gateway.log import EventLog

StreamHandler = Callable[[trio.SocketStream], Awaitable[None]]

# A client must take each chunk of a response within this, or it loses its connection: one
# that pipelines requests and reads nothing would otherwise hold a slot for good.
SEND_STALL_SECONDS = 30.0
_SEND_CHUNK = 65_536


@attrs.define
class ConnectionCap:
    limit: int
    log: EventLog
    # How many connections are being served now: always len(_streams), as an AsyncValue so
    # tests and status wait on it, never poll.
    open: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    send_stall_seconds: float = SEND_STALL_SECONDS
    refused: int = 0
    _saying_full: bool = False
    _streams: set[trio.SocketStream] = attrs.Factory(set)

    async def handle(self, serve_one: StreamHandler, stream: trio.SocketStream) -> None:
        if self.open.value >= self.limit:
            self._refuse()
            await trio.aclose_forcefully(stream)
            return
        self._streams.add(stream)
        self.open.value = len(self._streams)
        self._saying_full = False
        try:
            await serve_one(stream)
        finally:
            self._streams.discard(stream)
            self.open.value = len(self._streams)

    def close_all(self) -> None:
        """Close every connection being served. A task blocked writing to one (even inside
        hypercorn's deadline-less shield) wakes with ClosedResourceError and finishes."""
        for stream in list(self._streams):
            stream.socket.close()

    def _refuse(self) -> None:
        self.refused += 1
        if not self._saying_full:
            # One line per episode of being full, not one per refused connection.
            self._saying_full = True
            self.log.warn("HTTP", "Connection cap reached; refusing new connections", maxConnections=self.limit)


async def serve(
    app: Any,
    config: hypercorn.config.Config,
    cap: ConnectionCap,
    *,
    shutdown_trigger: Callable[[], Awaitable[object]],
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until `shutdown_trigger` returns; `task_status.started(urls)` once listening."""
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    sockets = config.create_sockets()
    listeners = []
    urls = []
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
        listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
        urls.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")
    one: StreamHandler = partial(_serve_connection, asgi, config, context, cap.send_stall_seconds)
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(trio.serve_listeners, partial(cap.handle, one), listeners)
            task_status.started(urls)
            await shutdown_trigger()
            await context.terminated.set()  # keep-alive connections close instead of idling on
        finally:
            # Also when we are cancelled from outside: the nursery cannot exit while a
            # connection task sits in hypercorn's shielded send to a client that reads nothing.
            nursery.cancel_scope.cancel(reason="HTTP server shutting down")
            cap.close_all()


async def _serve_connection(
    asgi: Any, config: hypercorn.config.Config, context: Any, stall_seconds: float, stream: trio.SocketStream
) -> None:
    # hypercorn types the stream as TLS and tells them apart itself (no `do_handshake`: plain).
    guarded: Any = _SendStallGuard(stream, stall_seconds)
    await TCPServer(asgi, config, context, {}, guarded)


@attrs.define(eq=False)
class _SendStallGuard(trio.abc.HalfCloseableStream):
    """The stream hypercorn is given: a plain SocketStream whose writes have a deadline per
    chunk. hypercorn sends inside a shield with no deadline; this deadline, inside it, still
    fires. On a stall the socket is closed and hypercorn sees BrokenResourceError (it handles
    that as the client having gone)."""

    inner: trio.SocketStream
    stall_seconds: float

    @property
    def socket(self) -> trio.socket.SocketType:  # hypercorn reads the peer address from it
        return self.inner.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _SEND_CHUNK):
            with trio.move_on_after(self.stall_seconds) as waited:
                await self.inner.send_all(view[start : start + _SEND_CHUNK])
            if waited.cancelled_caught:
                self.inner.socket.close()
                raise trio.BrokenResourceError(f"the client took no data for {self.stall_seconds:g} s")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()
