"""Accepting connections with a cap: hypercorn's HTTP protocol code, our own accept loop.

hypercorn accepts every connection it is offered (3,000 idle sockets were all accepted, each
holding memory and a file descriptor) and has no setting to cap them. So the gateway runs the
loop that `hypercorn.trio.serve` would run (listen, `trio.serve_listeners`, one hypercorn
`TCPServer` per connection) with a `ConnectionCap` in front: a connection beyond
`gateway.maxConnections` is closed at once, and the ones already open keep being served.
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


@attrs.define
class ConnectionCap:
    limit: int
    log: EventLog
    # Connections being served now (an AsyncValue: tests and status wait on it, never poll).
    open: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    refused: int = 0
    _saying_full: bool = False

    async def handle(self, serve_one: StreamHandler, stream: trio.SocketStream) -> None:
        if self.open.value >= self.limit:
            self._refuse()
            await trio.aclose_forcefully(stream)
            return
        self.open.value += 1
        self._saying_full = False
        try:
            await serve_one(stream)
        finally:
            self.open.value -= 1

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
    one: StreamHandler = partial(_serve_connection, asgi, config, context)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, partial(cap.handle, one), listeners)
        task_status.started(urls)
        await shutdown_trigger()
        await context.terminated.set()  # keep-alive connections close instead of idling on
        nursery.cancel_scope.cancel()


async def _serve_connection(asgi: Any, config: hypercorn.config.Config, context: Any, stream: Any) -> None:
    # `stream` is a plain SocketStream; hypercorn types it as TLS and tells them apart itself.
    await TCPServer(asgi, config, context, {}, stream)
