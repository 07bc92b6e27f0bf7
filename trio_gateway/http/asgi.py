"""The bits of the ASGI interface every app in this package needs (the gateway's API and the
fake upstreams in `trio_gateway.testing` alike)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol with nothing to do: the app owns no resources of its own.
    Answering keeps hypercorn from logging that the app "does not support lifespan"."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
