"""An HTTP MCP server made with the official `mcp` SDK (a dependency already), served by
hypercorn on loopback, against our production HTTP opener (issue 24, items 1 and 2)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import hypercorn.config
import pytest
import trio
from hypercorn.trio import serve

from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy import config as cfg
from trio_gateway.tools.registry import production_openers
from trio_gateway.work.units import WorkRegistry

pytestmark = pytest.mark.interop


@attrs.define
class Seen:
    """What the SDK's server saw: tool calls started, finished, cancelled; DELETEs."""

    started: list[str] = attrs.Factory(list)
    finished: list[str] = attrs.Factory(list)
    cancelled: list[str] = attrs.Factory(list)
    deletes: int = 0


def sdk_app(seen: Seen) -> Any:
    from mcp.server.mcpserver import MCPServer

    server = MCPServer("silent")

    @server.tool()
    async def silent(seconds: float, tag: str) -> str:
        """Says nothing for `seconds`, then answers: no progress, no bytes on the stream."""
        seen.started.append(tag)
        try:
            await trio.sleep(seconds)
        except trio.Cancelled:
            seen.cancelled.append(tag)
            raise
        seen.finished.append(tag)
        return f"{tag} done"

    app = server.streamable_http_app()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "DELETE":
            seen.deletes += 1
        await app(scope, receive, send)

    return counting


@asynccontextmanager
async def sdk_server(seen: Seen) -> AsyncIterator[str]:
    config = hypercorn.config.Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = config.errorlog = None
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(partial(serve, sdk_app(seen), config, mode="asgi"))
        yield url + "/mcp"
        nursery.cancel_scope.cancel()


def production_server(url: str) -> Any:
    from trio_gateway.tools.mcp import McpServer

    config = cfg.parse({"tools": {"mcpServers": {"silent": {"url": url}}}})
    opener = production_openers({}, None)("silent", config.tools.mcp_servers["silent"], config)
    return McpServer("silent", opener, EventLog([MemorySink()]), 1 << 20)


async def until(predicate: Any, seconds: float = 30) -> None:
    """Polls what the SDK's server and the supervisor record (they signal nothing)."""
    with trio.fail_after(seconds):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_a_tool_silent_longer_than_the_http_client_default_answers() -> None:
    """httpx's default read timeout is 5 s; the SDK's own client allows 300 s on the event
    stream. 6 s of silence (real time: a real server) must answer, not fail the call: the
    stall watchdog, not a read timeout, decides how long a tool may be silent."""
    seen = Seen()
    registry = WorkRegistry(EventLog([MemorySink()]))
    async with sdk_server(seen) as url, trio.open_nursery() as nursery:
        server = production_server(url)
        nursery.start_soon(server.run)
        await until(lambda: server.state == "running")
        with registry.track("tool_call") as unit, trio.fail_after(60):
            answer = await server.call("silent", {"seconds": 6, "tag": "six"}, unit.progress)
        nursery.cancel_scope.cancel()
    assert (answer.outcome, answer.text) == ("ok", "six done")
    # Longer silences (the SDK's own client allows 300 s on its event stream) are not waited
    # out in real time here: the client has no read timeout at all.
    from trio_gateway.tools.transport import MCP_HTTP_TIMEOUT

    assert MCP_HTTP_TIMEOUT.read is None


async def test_a_restart_cancels_every_call_and_ends_the_mcp_session() -> None:
    """A drain cancels each call's scope, then stops the server's supervisor: the SDK's server
    must see every call cancelled and the session ended (DELETE with its id), so nothing the
    gateway gave up on keeps running there."""
    seen = Seen()
    registry = WorkRegistry(EventLog([MemorySink()]))
    async with sdk_server(seen) as url:
        async with trio.open_nursery() as supervisor:
            server = production_server(url)
            supervisor.start_soon(server.run)
            await until(lambda: server.state == "running")
            async with trio.open_nursery() as calls:
                for tag in ("a", "b", "c", "d"):
                    calls.start_soon(_call, server, registry, tag)
                await until(lambda: len(seen.started) == 4)
                calls.cancel_scope.cancel(reason="drain deadline")  # the units' scopes
            supervisor.cancel_scope.cancel(reason="generation over")  # the services nursery
        with trio.move_on_after(10):
            await until(lambda: len(seen.cancelled) == 4 and seen.deletes == 1, 10)
    assert (sorted(seen.cancelled), seen.deletes) == (["a", "b", "c", "d"], 1)
    assert seen.finished == []


async def _call(server: Any, registry: WorkRegistry, tag: str) -> None:
    with registry.track("tool_call") as unit:
        await server.call("silent", {"seconds": 600, "tag": tag}, unit.progress)
