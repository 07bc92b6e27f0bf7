"""The tools of one generation (SPEC 14): what each agent is offered, and each call as a unit.

A tool the model sees is `<server>__<tool>` (an MCP server's tool) or `http_request`, filtered
by the agent's `tools` allow-list (`server.*`, `server.tool`, `http_request`). Each call is one
unit in the work registry, `tool_call` for MCP and `api_request` for HTTP, in its own cancel
scope: the stall watchdog and the drain govern it like a model call. An aborted call becomes
a tool error for the model and the turn goes on; a drain's cancellation propagates.

The MCP SDK costs about a second to import, so it is imported only when a server is configured.
"""

from __future__ import annotations

import importlib
import os
import random
import re
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.errors import ConfigError, WorkAbortedError
from trio_gateway.log import EventLog
from trio_gateway.models.base import Progress, ToolCall
from trio_gateway.policy.config import Config, McpServerConfig
from trio_gateway.tools import tool_error
from trio_gateway.tools.http import HTTP_TOOL, DeniedError, HttpTool
from trio_gateway.work.units import WorkKind, WorkRegistry, WorkUnit

if TYPE_CHECKING:
    from trio_gateway.tools.mcp import McpServer
    from trio_gateway.tools.transport import Opener

SEPARATOR = "__"
# OpenAI function names: a tool whose full name does not fit is not offered (and logged).
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Per server: how to open one connection to it (stdio process, HTTP, or a test's fake).
OpenerFactory = Callable[[str, McpServerConfig, Config], "Opener"]


def allowed(allow_list: list[str], server: str, tool: str) -> bool:
    return f"{server}.*" in allow_list or f"{server}.{tool}" in allow_list


@attrs.define(eq=False)
class ToolBox:
    config: Config
    registry: WorkRegistry
    log: EventLog
    servers: dict[str, McpServer] = attrs.Factory(dict)
    http: HttpTool | None = None
    # (kind, outcome) -> calls: `/metrics` trio_gateway_tool_calls_total.
    outcomes: Counter[tuple[str, str]] = attrs.Factory(Counter)

    # --- what the model is offered ------------------------------------------------------

    def offered(self, agent_id: str) -> list[dict[str, Any]]:
        agent = self.config.agents.get(agent_id)
        if agent is None or not agent.tools:
            return []
        offer: list[dict[str, Any]] = []
        for server in self.servers.values():
            for tool in server.tools:
                name = f"{server.name}{SEPARATOR}{tool['name']}"
                if allowed(agent.tools, server.name, tool["name"]) and FUNCTION_NAME.fullmatch(name):
                    offer.append(_function(name, tool))
        if "http_request" in agent.tools and self.http is not None:
            offer.append(HTTP_TOOL)
        return offer

    async def listed(self, agent_id: str) -> None:
        """Until every server the agent may use has connected once (or failed to): a turn that
        starts with the generation (a resumed one) is offered the tools it would be offered a
        second later. Bounded by the server's start timeout; no await at all once they are known
        (an agent without MCP tools, 10,000 sessions: not one extra checkpoint each)."""
        agent = self.config.agents.get(agent_id)
        allow = agent.tools if agent is not None else []
        for server in self.servers.values():
            if any(entry.startswith(f"{server.name}.") for entry in allow):
                await server.started()

    def handles(self, name: str) -> bool:
        return name == "http_request" or SEPARATOR in name

    # --- one call -----------------------------------------------------------------------

    async def call(self, session_id: str | None, parent: WorkUnit | None, agent_id: str, call: ToolCall) -> str:
        """One tool call as one unit. Returns what the model receives; raises only `Cancelled`."""
        kind: WorkKind = "api_request" if call.name == "http_request" else "tool_call"
        label = "http" if kind == "api_request" else "mcp"
        denied = self._denied(agent_id, call.name)
        if denied is not None:
            self.outcomes[(label, "denied")] += 1
            return tool_error(denied)
        try:
            with self.registry.track(kind, session_id, parent) as unit:
                unit.progress(f"{kind}:{call.name}")
                text, outcome = await self._dispatch(call, unit.progress)
        except WorkAbortedError as exc:
            self.outcomes[(label, "aborted")] += 1
            self.log.warn("TOOLS", "Tool call aborted; the model is told", tool=call.name, sessionId=session_id or "-")
            return tool_error(f"{call.name} was aborted ({exc}); it may have had effects")
        except trio.Cancelled:
            self.outcomes[(label, "cancelled")] += 1
            raise
        self.outcomes[(label, outcome)] += 1
        return text

    def _denied(self, agent_id: str, name: str) -> str | None:
        agent = self.config.agents.get(agent_id)
        allow = agent.tools if agent is not None else []
        if name == "http_request":
            return None if "http_request" in allow and self.http is not None else "http_request is not allowed"
        server, _, tool = name.partition(SEPARATOR)
        if server not in self.servers:
            return f"no MCP server named {server!r}"
        if not allowed(allow, server, tool):
            return f"tool {name!r} is not allowed for agent {agent_id!r}"
        return None

    async def _dispatch(self, call: ToolCall, progress: Progress) -> tuple[str, str]:
        if call.name == "http_request":
            assert self.http is not None
            try:
                return await self.http.call(call.arguments, progress), "ok"
            except DeniedError as exc:
                return tool_error(str(exc)), "denied"
            except http.HTTPError as exc:
                return tool_error(f"http_request failed: {type(exc).__name__}: {exc}"), "failed"
        server, _, tool = call.name.partition(SEPARATOR)
        result = await self.servers[server].call(tool, call.arguments, progress)
        return result.text, result.outcome

    def inherit(self, previous: ToolBox | None) -> None:
        """Offer the previous generation's tool listings until each server lists its own: a
        turn resumed right after a restart still sees its tools (its call waits for the start)."""
        if previous is None:
            return
        for name, server in self.servers.items():
            old = previous.servers.get(name)
            same = self.config.tools.mcp_servers.get(name) == previous.config.tools.mcp_servers.get(name)
            if old is not None and same and not server.tools:
                server.tools = list(old.tools)

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> None:
        """Every server's supervisor, in the generation's services nursery (cancelled there
        after the drain; each transport bounds its own stop)."""
        async with trio.open_nursery() as nursery:
            for server in self.servers.values():
                nursery.start_soon(self._supervise, server)

    async def _supervise(self, server: McpServer) -> None:
        try:
            await server.run()
        except Exception as exc:  # a bug in the supervisor: that server stops, never the gateway
            server.given_up(f"supervisor failed: {exc!r}")
            self.log.error("TOOLS", "MCP server supervisor failed; server stopped", server=server.name, error=repr(exc))

    async def aclose(self) -> None:
        if self.http is not None:
            await self.http.aclose()

    def status(self) -> list[dict[str, Any]]:
        return [server.status() for server in self.servers.values()]

    async def started(self) -> None:
        """Until every server has connected once or failed to (tests, fixtures)."""
        for server in self.servers.values():
            await server.started()


def _function(name: str, tool: Mapping[str, Any]) -> dict[str, Any]:
    schema = tool.get("inputSchema") or {"type": "object", "properties": {}}
    return {
        "type": "function",
        "function": {"name": name, "description": tool.get("description", ""), "parameters": schema},
    }


# --- building ---------------------------------------------------------------------------------


async def preload(config: Config) -> None:
    """Import the MCP SDK in a thread when this config needs it for the first time: the import
    takes a second or more, and on the event loop it would freeze `/healthz` and every turn."""
    if config.tools.mcp_servers and "trio_gateway.tools.mcp" not in sys.modules:
        # Abandonable (WAITS.md): a cancelled caller leaves; the import finishes on its own.
        await trio.to_thread.run_sync(importlib.import_module, "trio_gateway.tools.mcp", abandon_on_cancel=True)


def build_toolbox(
    config: Config,
    registry: WorkRegistry,
    log: EventLog,
    opener_for: OpenerFactory,
    *,
    http_transport: http.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
) -> ToolBox:
    box = ToolBox(config, registry, log)
    if config.tools.mcp_servers:
        from trio_gateway.tools.mcp import McpServer

        cap = config.tools.http.max_response_bytes
        for name, server_config in config.tools.mcp_servers.items():
            opener = opener_for(name, server_config, config)
            box.servers[name] = McpServer(name, opener, log, cap, rng or random.Random())
    if any("http_request" in a.tools for a in config.agents.values()):
        timeout = http.Timeout(30.0, connect=10.0)
        # One client serves every session: a cookie one request receives must never ride on
        # another's (one user's login handed to another user's model). A jar that keeps none.
        no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
        client = http.AsyncClient(
            transport=http_transport, timeout=timeout, follow_redirects=False, trust_env=False, cookies=no_cookies
        )
        box.http = HttpTool(config.tools.http, client)
    return box


def production_openers(env: Mapping[str, str], logs_dir: str | None) -> OpenerFactory:
    """Real stdio processes and streamable HTTP servers. Header values come from the
    environment variables `headersEnv` names (checked by `preflight`)."""

    def opener_for(name: str, server: McpServerConfig, config: Config) -> Opener:
        from trio_gateway.tools.transport import http_opener, stdio_opener

        stop = config.gateway.channel_stop_timeout_seconds
        if server.command is not None:
            stderr = os.path.join(logs_dir, f"mcp-{name}.stderr.log") if logs_dir else None
            return stdio_opener(server.command, server_env(server, env), stop, stderr)
        assert server.url is not None
        headers = {header: env.get(var, "") for header, var in server.headers_env.items()}
        return http_opener(server.url, headers, lambda: http.AsyncClient(trust_env=False))

    return opener_for


# What a stdio server inherits from the gateway's environment: enough to find programs and a
# home, never the gateway's own secrets (model keys, channel tokens).
INHERITED_ENV = ("HOME", "LANG", "LC_ALL", "LOGNAME", "PATH", "SHELL", "TERM", "TMPDIR", "TZ", "USER")


def server_env(server: McpServerConfig, env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a stdio server: inherited basics, `env`, then `envFrom`."""
    inherited = {k: env[k] for k in INHERITED_ENV if k in env}
    secrets = {var: env.get(source, "") for var, source in server.env_from.items()}
    return {**inherited, **server.env, **secrets}


def check_env(config: Config, env: Mapping[str, str]) -> None:
    """Every secret a tools config names is present (run by `assemble.preflight`)."""
    for name, server in config.tools.mcp_servers.items():
        for var, source in server.env_from.items():
            if not env.get(source):
                raise ConfigError(f"tools.mcpServers.{name}.envFrom.{var}", f"environment variable {source} is not set")
        for header, var in server.headers_env.items():
            if not env.get(var):
                raise ConfigError(
                    f"tools.mcpServers.{name}.headersEnv.{header}", f"environment variable {var} is not set"
                )
