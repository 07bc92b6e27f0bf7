"""One MCP server for one generation: connect, list its tools, serve calls, restart when it dies.

The supervisor (`McpServer.run`) lives in the generation's services nursery, so a drain stops it
after the work is gone, and the transport's own exit bounds the stop (SIGTERM to the group,
SIGKILL after `channelStopTimeoutSeconds`). A server that dies or misbehaves ends its connection
with a reason (`Link.failure`); every call in flight fails with that reason as a tool error, and
the supervisor connects again after a full-jitter backoff (`backoff.delay`). Nothing a server
does can raise out of `run()` or `call()`: the gateway outlives its tools.

A call runs inside the caller's `tool_call` unit: the SDK's progress callback is the unit's
progress, so a tool that reports progress is never judged stalled. Cancelling the unit's scope
(stall abort, drain deadline) cancels the SDK request, which sends `notifications/cancelled`.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs
import trio
from mcp import types
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError

from trio_gateway.errors import leaves
from trio_gateway.log import EventLog
from trio_gateway.models.base import Progress
from trio_gateway.policy import backoff
from trio_gateway.tools import tool_error
from trio_gateway.tools.transport import Link, Opener

ServerState = Literal["starting", "running", "restarting", "stopped"]
# A server that does not finish its handshake and tool listing in this long is treated as dead.
START_TIMEOUT_SECONDS = 30.0
RESTART_INITIAL_SECONDS = 0.5
RESTART_MAX_SECONDS = 30.0


@attrs.define(eq=False)
class CallOutcome:
    text: str
    outcome: str  # ok, tool_error (the tool said so), failed (server dead or broken)


@attrs.define(eq=False)
class McpServer:
    name: str
    opener: Opener
    log: EventLog
    max_result_bytes: int
    rng: random.Random = attrs.Factory(random.Random)
    state: ServerState = "starting"
    tools: list[dict[str, Any]] = attrs.Factory(list)
    last_error: str | None = None
    restarts: int = 0
    pid: int | None = None
    _session: ClientSession | None = None
    _link: Link | None = None
    # Set when the first connection of this generation is ready: a call made while the server
    # is still starting (a resumed turn right after a restart) waits for it, inside its unit,
    # so the stall watchdog bounds the wait. After a crash calls fail at once instead.
    _first_ready: trio.Event = attrs.Factory(trio.Event)

    async def run(self) -> None:
        """Connect, serve until the connection dies, back off, connect again; until cancelled."""
        failures = 0
        try:
            while True:
                served = await self._serve_once()
                self._first_ready.set()  # from now on a call to a server that is down fails at once
                failures = 0 if served else failures + 1
                wait = backoff.delay(failures + 1, RESTART_INITIAL_SECONDS, RESTART_MAX_SECONDS, self.rng)
                self.state = "restarting"
                self.restarts += 1
                self.log.warn("TOOLS", "MCP server down; restarting", server=self.name, error=self.last_error,
                              inSeconds=round(wait, 2))  # fmt: skip
                await trio.sleep(wait)
        finally:
            self.state = "stopped"
            self._first_ready.set()  # nothing may wait for a server with no supervisor

    def given_up(self, error: str) -> None:
        """Its supervisor is gone (a bug): calls fail at once, turns stop waiting for its tools."""
        self.last_error = error
        self.state = "stopped"
        self._first_ready.set()

    async def _serve_once(self) -> bool:
        """One connection's life. True when it got as far as serving calls."""
        self.state = "starting" if self.restarts == 0 else "restarting"
        served = False
        try:
            async with self.opener() as link, ClientSession(link.read, link.write) as session:
                with trio.move_on_after(START_TIMEOUT_SECONDS) as start:
                    await self._handshake(session, link)
                if start.cancelled_caught:
                    link.fail(f"no handshake within {START_TIMEOUT_SECONDS:g}s")
                if link.failure is None:
                    self._session, self._link, self.pid = session, link, link.pid
                    self.state, served = "running", True
                    self._first_ready.set()
                    pid = {} if link.pid is None else {"pid": link.pid}
                    self.log.info("TOOLS", "MCP server ready", server=self.name, tools=len(self.tools), **pid)
                await link.dead.wait()
                self.last_error = link.failure
        except* Exception as group:  # a spawn failure, a protocol error: never the gateway
            # Every error the connection's tasks raised: the first alone could hide the cause.
            self.last_error = "; ".join(_describe(exc) for exc in leaves(group))
        finally:
            self._session = self._link = None
            self.pid = None
        return served

    async def _handshake(self, session: ClientSession, link: Link) -> None:
        try:
            await session.initialize()
            listing = await session.list_tools()
        except MCPError as exc:
            link.fail(link.failure or f"handshake failed: {exc.error.message}")
            return
        self.tools = [_tool_json(t) for t in listing.tools]

    async def call(self, tool: str, arguments: dict[str, Any], report: Progress) -> CallOutcome:
        """Call one tool. Never raises but `Cancelled` (the unit's abort or a drain)."""
        if self.state == "starting":
            report(f"tool_call:{self.name}__{tool} waiting for the server to start")
            await self._first_ready.wait()
        session, link = self._session, self._link
        if session is None or link is None:
            why = f": {self.last_error}" if self.last_error else ""
            return CallOutcome(tool_error(f"MCP server {self.name!r} is {self.state}{why}"), "failed")

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            of = f"/{total:g}" if total is not None else ""
            report(f"tool_call:{self.name}__{tool} progress {progress:g}{of}")

        try:
            result = await session.call_tool(tool, arguments, progress_callback=on_progress)
        except MCPError as exc:
            reason = link.failure or exc.error.message
            return CallOutcome(tool_error(f"MCP server {self.name!r} failed the call: {reason}"), "failed")
        except Exception as exc:  # a reply the SDK cannot validate, an input it refuses
            return CallOutcome(tool_error(f"MCP server {self.name!r}: {_describe(exc)}"), "failed")
        text = _result_text(result)
        if len(text.encode()) > self.max_result_bytes:
            text = text.encode()[: self.max_result_bytes].decode("utf-8", "ignore") + " [cut: reply too long]"
        if result.is_error:
            return CallOutcome(tool_error(text), "tool_error")
        return CallOutcome(text, "ok")

    async def started(self) -> None:
        """Until the first connection of this generation is ready or has failed."""
        if not self._first_ready.is_set():
            await self._first_ready.wait()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "lastError": self.last_error,
            "tools": [t["name"] for t in self.tools],
        }


def _tool_json(tool: types.Tool) -> dict[str, Any]:
    return {"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema}


def _result_text(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for item in result.content:
        if isinstance(item, types.TextContent):
            parts.append(item.text)
        else:
            parts.append(item.model_dump_json(by_alias=True, exclude_none=True))
    return "\n".join(parts)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
