"""A fake MCP server whose tools answer, hang, report progress then go silent, crash or flood.

Hand-written JSON-RPC over newline-delimited lines, not the SDK's server: the point of this fake
is to misbehave on purpose (a line that is not JSON, a reply bigger than any cap, an exit in the
middle of a call), which a well-behaved server library would not let it do.

The same core serves three ways:
- in-process, no subprocess: `FakeMcpServer.serve(receive, send)` over trio memory streams
  (`in_process_opener`, `FakeMcpServers`, `in_process_tools` wire it to a gateway through the
  production line transport), so it runs on MockClock (`autojump_clock`);
- as a streamable HTTP endpoint, in-process: `async with http_transport(fake) as transport` gives
  an httpx2 `MockTransport` for the production HTTP opener;
- as a real stdio server: `python -m trio_gateway.sim.fake_mcp [--events FILE] [--stubborn]`,
  which appends one JSON line per event (`started` with its pid, `call`, `cancelled`) to FILE so
  a real-process test can see what the server saw (`read_events`); `--stubborn` ignores SIGTERM
  and stdin's end and forks a child, to prove the stop leaves no orphan.

Tools (arguments in parentheses):
    echo(text)                   answers with the text
    hang()                       never answers
    slow(seconds, every)         a progress notification every `every` s, answers after `seconds`
    progress_then_silent(count, every)  `count` progress notifications, then never answers
    crash()                      the server exits (in-process: the connection closes) mid-call
    flood(bytes)                 answers with a reply of about `bytes` bytes on one line
    garbage()                    writes a line that is not JSON-RPC, then never answers
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.testing

if TYPE_CHECKING:
    from trio_gateway import upstream as http
    from trio_gateway.log import EventLog
    from trio_gateway.policy.config import Config, McpServerConfig
    from trio_gateway.tools.registry import ToolBox
    from trio_gateway.tools.transport import Link, Opener
    from trio_gateway.work.units import WorkRegistry

_TOOLS: list[dict[str, Any]] = [
    {
        "name": "echo",
        "description": "Answer with the given text.",
        "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
    {"name": "hang", "description": "Never answer.", "inputSchema": {"type": "object", "properties": {}}},
    {
        "name": "slow",
        "description": "Report progress every `every` seconds; answer after `seconds`.",
        "inputSchema": {
            "type": "object",
            "properties": {"seconds": {"type": "number"}, "every": {"type": "number"}},
        },
    },
    {
        "name": "progress_then_silent",
        "description": "Report progress `count` times, then never answer.",
        "inputSchema": {
            "type": "object",
            "properties": {"count": {"type": "integer"}, "every": {"type": "number"}},
        },
    },
    {"name": "crash", "description": "Exit in the middle of the call.", "inputSchema": {"type": "object"}},
    {
        "name": "flood",
        "description": "Answer with a reply of about `bytes` bytes.",
        "inputSchema": {"type": "object", "properties": {"bytes": {"type": "integer"}}},
    },
    {"name": "garbage", "description": "Write a line that is not JSON-RPC.", "inputSchema": {"type": "object"}},
]

SendLine = Callable[[bytes], Awaitable[None]]


class FakeCrash(Exception):
    """The `crash` tool: the serving loop ends as a real server's process would."""


@attrs.define(eq=False)
class FakeMcpServer:
    """One server's behaviour and what it saw. `calls` lists tool names in arrival order;
    `cancelled` the request ids the client cancelled (`notifications/cancelled`)."""

    name: str = "fake"
    # Seconds before it answers `initialize`: a server slow to start.
    start_delay: float = 0.0
    calls: list[str] = attrs.Factory(list)
    cancelled: list[Any] = attrs.Factory(list)
    on_event: Callable[[dict[str, Any]], None] = lambda _event: None
    connections: int = 0
    _running: dict[Any, trio.CancelScope] = attrs.Factory(dict)

    async def serve(self, lines: trio.abc.ReceiveStream, send: SendLine) -> None:
        """Answer requests read from `lines` (newline-delimited JSON) until EOF or a crash."""
        self.connections += 1
        async with trio.open_nursery() as nursery:
            buffer = b""
            while True:
                chunk = await lines.receive_some(65536)
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    if line.strip():
                        self._dispatch(json.loads(line), send, nursery)
            nursery.cancel_scope.cancel(reason="client closed stdin")

    def _dispatch(self, message: dict[str, Any], send: SendLine, nursery: trio.Nursery) -> None:
        method = message.get("method")
        if method == "notifications/cancelled":
            request_id = (message.get("params") or {}).get("requestId")
            self.cancelled.append(request_id)
            self.on_event({"event": "cancelled", "requestId": request_id})
            scope = self._running.pop(request_id, None)
            if scope is not None:
                scope.cancel(reason="client cancelled the request")
            return
        if "id" not in message or method is None:
            return  # a notification (initialized) or a response: nothing to answer
        nursery.start_soon(self._answer, message, send, nursery.cancel_scope)

    async def _answer(self, message: dict[str, Any], send: SendLine, connection: trio.CancelScope) -> None:
        request_id = message["id"]
        with trio.CancelScope() as scope:
            self._running[request_id] = scope
            try:
                result = await self._result(message, send)
            except FakeCrash:
                connection.cancel(reason="crash tool")
                raise
            finally:
                self._running.pop(request_id, None)
            if result is not None:
                await send(_line({"jsonrpc": "2.0", "id": request_id, "result": result}))

    async def _result(self, message: dict[str, Any], send: SendLine) -> dict[str, Any] | None:
        method = message["method"]
        params = message.get("params") or {}
        if method == "initialize":
            await trio.sleep(self.start_delay)
            return {
                "protocolVersion": params.get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": self.name, "version": "0"},
            }
        if method == "tools/list":
            return {"tools": _TOOLS}
        if method == "ping":
            return {}
        if method == "tools/call":
            return await self._call(params, send)
        return None

    async def _call(self, params: dict[str, Any], send: SendLine) -> dict[str, Any] | None:
        name = params.get("name")
        args = params.get("arguments") or {}
        token = (params.get("_meta") or {}).get("progressToken")
        self.calls.append(str(name))
        self.on_event({"event": "call", "tool": name})
        if name == "echo":
            return _text(str(args.get("text", "")))
        if name == "slow":
            every = float(args.get("every", 1))
            steps = max(1, round(float(args.get("seconds", 1)) / every))
            for i in range(steps):
                await trio.sleep(every)
                await _progress(send, token, i + 1, steps)
            return _text("slow done")
        if name == "progress_then_silent":
            every = float(args.get("every", 1))
            for i in range(int(args.get("count", 1))):
                await trio.sleep(every)
                await _progress(send, token, i + 1, None)
            await trio.sleep_forever()
        if name == "hang":
            await trio.sleep_forever()
        if name == "crash":
            raise FakeCrash
        if name == "flood":
            return _text("x" * int(args.get("bytes", 1 << 20)))
        if name == "garbage":
            await send(b"this is not JSON-RPC\n")
            await trio.sleep_forever()
        return {"content": [{"type": "text", "text": f"no tool {name!r}"}], "isError": True}


def _text(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def _progress(send: SendLine, token: Any, progress: float, total: float | None) -> None:
    if token is None:
        return
    params: dict[str, Any] = {"progressToken": token, "progress": progress}
    if total is not None:
        params["total"] = total
    await send(_line({"jsonrpc": "2.0", "method": "notifications/progress", "params": params}))


# --- in-process -----------------------------------------------------------------------------


@attrs.define
class FakeMcpServers:
    """In-process fakes by server name, made on first use: every server a config names under
    `tools.mcpServers` is served by a `FakeMcpServer`, whatever its command or url says."""

    servers: dict[str, FakeMcpServer] = attrs.Factory(dict)

    def __getitem__(self, name: str) -> FakeMcpServer:
        if name not in self.servers:
            self.servers[name] = FakeMcpServer(name=name)
        return self.servers[name]

    def opener_for(self, name: str, _server: McpServerConfig, _config: Config) -> Opener:
        return in_process_opener(self[name])


def in_process_opener(fake: FakeMcpServer) -> Opener:
    """One connection to `fake` over trio memory streams (no process, MockClock-friendly)
    through the production line transport, so garbage, floods and crashes take the same path."""
    from trio_gateway.tools.transport import pipe_link

    @asynccontextmanager
    async def open_fake() -> AsyncIterator[Link]:
        client, server = trio.testing.memory_stream_pair()
        lock = trio.Lock()

        async def send(data: bytes) -> None:
            async with lock:
                await server.send_all(data)

        # The fake is a server: it lives outside the gateway's scopes, so a drain's cancellation
        # reaches it only as the client closing the connection (EOF), like a real process.
        serving = trio.CancelScope(shield=True)

        async def serve() -> None:
            with serving:
                try:
                    await fake.serve(server, send)
                except* FakeCrash:
                    pass
                finally:
                    await server.aclose()  # the client reads EOF: the "process" is gone

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            try:
                async with pipe_link(client, client) as link:
                    yield link
            finally:
                serving.deadline = trio.current_time() + 1.0  # the bounded end of its shield
                await client.aclose()

    return open_fake


def in_process_tools(
    fakes: FakeMcpServers, http_transport: http.AsyncBaseTransport | None = None
) -> Callable[[Config, WorkRegistry, EventLog], ToolBox]:
    """A gateway `tools_factory` whose MCP servers are `fakes` (and HTTP, `http_transport`)."""

    def factory(config: Config, registry: WorkRegistry, log: EventLog) -> ToolBox:
        from trio_gateway.tools.registry import build_toolbox

        return build_toolbox(config, registry, log, fakes.opener_for, http_transport=http_transport)

    return factory


# --- streamable HTTP, in-process -------------------------------------------------------------


@asynccontextmanager
async def http_transport(fake: FakeMcpServer) -> AsyncIterator[http.AsyncBaseTransport]:
    """`fake` as a streamable HTTP MCP endpoint behind an httpx2 `MockTransport` (no socket, so
    MockClock-friendly): each request POST is answered with an SSE stream carrying its progress
    notifications and its response; a notification POST gets 202. No session id, so the client
    opens no GET stream. The same `serve` core runs behind it, fed one line per POST."""
    from trio_gateway import upstream as http_client

    to_server, server_in = trio.testing.memory_stream_one_way_pair()
    routes: dict[Any, trio.MemorySendChannel[bytes]] = {}

    async def from_server(data: bytes) -> None:
        for line in data.splitlines():
            message = json.loads(line)
            key = message.get("id", (message.get("params") or {}).get("progressToken"))
            route = routes.get(key)
            if route is not None:
                route.send_nowait(line)
                if "id" in message:
                    route.close()

    async def handle(request: http_client.Request) -> http_client.Response:
        body = request.content
        message = json.loads(body)
        if "id" not in message or "method" not in message:
            await to_server.send_all(body + b"\n")
            return http_client.Response(202)
        send, receive = trio.open_memory_channel[bytes](math.inf)
        routes[message["id"]] = send
        await to_server.send_all(body + b"\n")

        async def events() -> AsyncIterator[bytes]:
            async with receive:
                async for line in receive:
                    yield b"event: message\ndata: " + line + b"\n\n"

        return http_client.Response(200, headers={"content-type": "text/event-stream"}, content=events())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve, server_in, from_server)
        yield http_client.MockTransport(handle)
        nursery.cancel_scope.cancel(reason="fake HTTP MCP server closed")


# --- stdio --------------------------------------------------------------------------------

# How to start the stdio fake from a config, a test or a benchmark.
STDIO_COMMAND = [sys.executable, "-m", "trio_gateway.sim.fake_mcp"]


def read_events(path: Path) -> list[dict[str, Any]]:
    """What a stdio fake started with `--events path` saw, one dict per event."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def process_state(pid: int) -> str:
    """'gone', 'zombie' or 'alive', from /proc (a zombie still answers kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return "zombie" if stat.rsplit(")", 1)[1].split()[0] == "Z" else "alive"


def _event_writer(path: str | None) -> Callable[[dict[str, Any]], None]:
    def write(event: dict[str, Any]) -> None:
        if path is None:
            return
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**event, "pid": os.getpid(), "t": time.time()}) + "\n")

    return write


async def _main(args: argparse.Namespace) -> None:
    on_event = _event_writer(args.events)
    fake = FakeMcpServer(name=args.name, on_event=on_event)
    if args.stubborn:
        # Ignores SIGTERM and stdin's end, and forks a child into its process group: only
        # SIGKILL to the group ends both (the gateway's stop must leave no orphan behind).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen(["sleep", "3600"])  # noqa: ASYNC220 (a fire-and-forget child)
        on_event({"event": "child", "childPid": child.pid})
    on_event({"event": "started"})
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    lock = trio.Lock()

    async def send(data: bytes) -> None:
        async with lock:
            await stdout.send_all(data)

    try:
        await fake.serve(stdin, send)
        if args.stubborn:
            await trio.sleep_forever()
    except BaseExceptionGroup as group:
        if group.subgroup(FakeCrash) is None:
            raise
        on_event({"event": "crashed"})
        os._exit(3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trio_gateway.sim.fake_mcp", description=__doc__)
    parser.add_argument("--name", default="fake")
    parser.add_argument("--events", default=None, help="append one JSON line per event to this file")
    parser.add_argument("--stubborn", action="store_true", help="ignore SIGTERM and EOF; fork a child")
    args = parser.parse_args(argv)
    try:
        trio.run(_main, args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
