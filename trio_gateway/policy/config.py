"""The configuration (SPEC 3): attrs classes, the rules types cannot say, and dotted-key access.

Pure: no file or network I/O here beyond what callers hand in. A bad value is a `ConfigError`
that names the key path in the file's own camelCase spelling (`gateway.drain.timeoutSeconds`),
so an operator can find it; nothing is coerced (`"5"` is not a number, `4.9` is not a port): the
file is read by `codec`, the one converter of every file the gateway reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Mapping
from typing import Any, Literal

import attrs

from trio_gateway.errors import ConfigError
from trio_gateway.policy import codec, strict_json
from trio_gateway.policy.origin import Origin

Recovery = Literal["abort", "none"]


@attrs.frozen
class DrainConfig:
    timeout_seconds: float = 60.0
    progress_interval_seconds: float = 5.0
    resume_interrupted: bool = True
    # How long interrupted work may spend on its own cleanup (mark the turn interrupted,
    # enqueue its notice) after the deadline cancels it. Shielded, so it must be short.
    cleanup_timeout_seconds: float = 2.0


@attrs.frozen
class RecoveryConfig:
    # SPEC 3 spells these keys as the work kinds are spelled (`model_call`), not camelCase.
    __snake_keys__ = True

    model_call: Recovery = "abort"
    tool_call: Recovery = "abort"
    api_request: Recovery = "abort"
    embedded_run: Recovery = "none"

    def for_kind(self, kind: str) -> Recovery:
        value: Recovery = getattr(self, kind, "none")
        return value


@attrs.frozen
class StallConfig:
    enabled: bool = True
    threshold_seconds: float = 120.0
    check_interval_seconds: float = 1.0
    recovery: RecoveryConfig = RecoveryConfig()


@attrs.frozen
class TestEndpointsConfig:
    enabled: bool = False


@attrs.frozen
class GatewaySection:
    bind: str = "127.0.0.1"
    port: int = 18789
    drain: DrainConfig = DrainConfig()
    channel_stop_timeout_seconds: float = 5.0
    stalled_task_detection: StallConfig = StallConfig()
    test_endpoints: TestEndpointsConfig = TestEndpointsConfig()
    max_body_bytes: int = 1_048_576
    # A request body must arrive whole within this; a slow sender cannot hold a slot forever.
    body_read_timeout_seconds: float = 30.0
    # Open HTTP connections at once; one more is closed at accept (the gateway keeps serving).
    max_connections: int = 1000
    # Bodies of unauthenticated requests (webhooks: their signature is checked after the body)
    # read at once; one more is refused with 503, so strangers pin at most this x maxBodyBytes.
    max_unverified_bodies: int = 64
    # A session with nothing running or owed leaves memory after this long without a turn;
    # its file stays, and its next turn reads it back.
    session_evict_after_seconds: float = 3600.0
    # A step of one task on the event loop longer than this is logged (`[LOOP] Blocked N ms`)
    # and counted in /metrics: nothing may block the loop (work/loop.py).
    loop_block_warn_ms: float = 100.0


@attrs.frozen
class ModelConfig:
    provider: Literal["openai", "echo"] | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    model: str | None = None
    stream: bool = True
    request_timeout_seconds: float = 120.0

    @property
    def kind(self) -> Literal["openai", "echo"]:
        if self.provider is not None:
            return self.provider
        return "openai" if self.base_url is not None else "echo"


InboundMode = Literal["poll", "socket", "webhook", "off"]


@attrs.frozen
class InboundConfig:
    """How an account listens (SPEC 11); None: the channel's own default for the credentials."""

    mode: InboundMode | None = None


@attrs.frozen
class AccountConfig:
    """One account of one channel. Secrets are named by environment variable, never stored."""

    base_url: str | None = None
    app_id: str | None = None
    app_secret_env: str | None = None
    token_env: str | None = None
    # Inbound webhook verification (SPEC 5): Feishu verification token / encrypt key,
    # Slack signing secret, Telegram secret token. Also only environment variable names.
    verification_token_env: str | None = None
    signing_secret_env: str | None = None
    secret_token_env: str | None = None
    # Deprecated fallback only: a WeChat context token belongs to a conversation and arrives
    # with each inbound message (carried in the turn's origin); see channels/weixin.py.
    context_token: str | None = None
    inbound: InboundConfig = InboundConfig()
    # Slack Socket Mode's app-level token; Feishu's webhook encrypt key (SPEC 11).
    app_token_env: str | None = None
    encrypt_key_env: str | None = None


@attrs.frozen
class ChannelConfig:
    accounts: dict[str, AccountConfig] = attrs.Factory(dict)


@attrs.frozen
class AgentConfig:
    account_id: str | None = None
    channels: list[str] = attrs.Factory(lambda: ["console"])
    model: str = "default"
    system_prompt: str = ""
    max_subagent_depth: int = 3
    max_tool_rounds: int = 8
    # SPEC 14 allow-list: "server.*", "server.tool", "http_request" (spawn_subagent is always offered).
    tools: list[str] = attrs.Factory(list)


@attrs.frozen
class McpServerConfig:
    """One MCP server (SPEC 14): `command` (stdio) or `url` (streamable HTTP), never both.
    `env` is passed to the server as written (not secrets); `envFrom` and `headersEnv` name, per
    variable or header, the environment variable holding its value, so a token never sits in
    gateway.json. A stdio server inherits only a few harmless variables (PATH, HOME, ...) of the
    gateway's environment, never its secrets."""

    command: list[str] | None = None
    env: dict[str, str] = attrs.Factory(dict)
    # Secrets for a stdio server: its variable name -> the gateway's environment variable
    # holding the value (`{"GITHUB_TOKEN": "GATEWAY_GITHUB_TOKEN"}`), like `headersEnv`.
    env_from: dict[str, str] = attrs.Factory(dict)
    url: str | None = None
    headers_env: dict[str, str] = attrs.Factory(dict)


@attrs.frozen
class HttpToolConfig:
    allow_hosts: list[str] = attrs.Factory(list)
    max_response_bytes: int = 1_048_576


@attrs.frozen
class ToolsConfig:
    mcp_servers: dict[str, McpServerConfig] = attrs.Factory(dict)
    http: HttpToolConfig = HttpToolConfig()


@attrs.frozen
class DeliveryConfig:
    max_attempts: int = 20
    initial_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    max_total_retry_seconds: float = 300.0
    concurrency: int = 8
    attempt_timeout_seconds: float = 30.0
    rescan_interval_seconds: float = 5.0


@attrs.frozen
class CronEntry:
    id: str
    agent: str
    every_seconds: float
    prompt: str
    origin: Origin | None = None


@attrs.frozen
class LoggingConfig:
    """`logs/gateway.log` rotates by size; at most (backupCount + 1) * maxFileBytes on disk."""

    max_file_bytes: int = 10 * 1024 * 1024
    backup_count: int = 5


# Bounds: a file smaller than 64 KiB rotates every few seconds of a busy drain; one larger
# than 1 GiB is no longer something an operator opens.
_LOG_FILE_BYTES = (64 * 1024, 1024 * 1024 * 1024)
_LOG_BACKUPS = (0, 100)


@attrs.frozen
class ClusterConfig:
    """SPEC 12. Absent (or `backend` "files"): one gateway per home, state in files."""

    backend: Literal["files", "postgres"] = "files"
    dsn_env: str = "TRIO_GATEWAY_PG_DSN"
    node_id: str | None = None  # None: `<hostname>-<pid>`
    heartbeat_seconds: float = 2.0
    dead_after_seconds: float = 10.0
    # Every database call is bounded (server-side statement_timeout, and cancelled from trio
    # at the same bound): a stuck database cannot hold a drain past its one deadline.
    statement_timeout_seconds: float = 5.0
    # How often a node looks for work other nodes queued or released (a short poll).
    poll_seconds: float = 0.2


def _default_models() -> dict[str, ModelConfig]:
    return {"default": ModelConfig(provider="echo")}


def _default_agents() -> dict[str, AgentConfig]:
    return {"main": AgentConfig()}


@attrs.frozen
class Config:
    gateway: GatewaySection = GatewaySection()
    models: dict[str, ModelConfig] = attrs.Factory(_default_models)
    channels: dict[str, ChannelConfig] = attrs.Factory(dict)
    agents: dict[str, AgentConfig] = attrs.Factory(_default_agents)
    delivery: DeliveryConfig = DeliveryConfig()
    cron: list[CronEntry] = attrs.Factory(list)
    logging: LoggingConfig = LoggingConfig()
    cluster: ClusterConfig = ClusterConfig()
    tools: ToolsConfig = ToolsConfig()


# --- rules beyond types ---------------------------------------------------------------------


# Every number in the file has a finite documented range (SPEC 5: "an absurd timeout is a 400,
# never a crash"): `1e308` as a drain timeout overflowed a log line at every stop, `1e-300` as a
# check interval spun a CPU. `*` is any name under a map, `[*]` any list index. README lists them;
# a test fails when a numeric key has no range here.
RANGES: dict[str, tuple[float, float]] = {
    "gateway.port": (0, 65535),
    "gateway.drain.timeoutSeconds": (0.001, 86_400),
    "gateway.drain.progressIntervalSeconds": (0.1, 3_600),
    "gateway.drain.cleanupTimeoutSeconds": (0.01, 300),
    "gateway.channelStopTimeoutSeconds": (0.01, 300),
    "gateway.stalledTaskDetection.thresholdSeconds": (0.1, 86_400),
    "gateway.stalledTaskDetection.checkIntervalSeconds": (0.01, 3_600),
    "gateway.maxBodyBytes": (256, 64 * 1_048_576),
    "gateway.bodyReadTimeoutSeconds": (0.1, 3_600),
    "gateway.maxConnections": (1, 100_000),
    "gateway.sessionEvictAfterSeconds": (1, 31_622_400),
    "gateway.maxUnverifiedBodies": (1, 10_000),
    "gateway.loopBlockWarnMs": (1, 3_600_000),
    "logging.maxFileBytes": _LOG_FILE_BYTES,
    "logging.backupCount": _LOG_BACKUPS,
    "models.*.requestTimeoutSeconds": (0.01, 86_400),
    "agents.*.maxSubagentDepth": (1, 16),
    "agents.*.maxToolRounds": (1, 100),
    "delivery.maxAttempts": (1, 1_000),
    "delivery.initialBackoffSeconds": (0.001, 86_400),
    "delivery.maxBackoffSeconds": (0.001, 86_400),
    "delivery.maxTotalRetrySeconds": (0.001, 2_592_000),
    "delivery.concurrency": (1, 1_024),
    "delivery.attemptTimeoutSeconds": (0.01, 3_600),
    "delivery.rescanIntervalSeconds": (0.01, 86_400),
    "cron[*].everySeconds": (0.1, 31_622_400),
    "cluster.heartbeatSeconds": (0.05, 3_600),
    "cluster.deadAfterSeconds": (0.1, 86_400),
    "cluster.statementTimeoutSeconds": (0.05, 3_600),
    "cluster.pollSeconds": (0.01, 60),
    "tools.http.maxResponseBytes": (1, 1_073_741_824),
}


def _show_number(value: float) -> str:
    """A number for an error message; never raises (`f"{10**400:g}"` overflows)."""
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"an integer of {len(str(abs(value)))} digits"
    return f"{value:g}" if isinstance(value, float) else str(value)


def numbers(obj: object, pattern: str = "", path: str = "") -> list[tuple[str, str, float]]:
    """Every number in a config as (range pattern, key path, value), in the file's spelling."""
    found: list[tuple[str, str, float]] = []
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return found
    if isinstance(obj, (int, float)):
        return [(pattern, path, obj)]
    if isinstance(obj, Mapping):
        for key, child in obj.items():
            found += numbers(child, f"{pattern}.*", f"{path}.{key}")
    elif isinstance(obj, list):
        for i, child in enumerate(obj):
            found += numbers(child, f"{pattern}[*]", f"{path}[{i}]")
    elif attrs.has(type(obj)):
        cls: Any = type(obj)
        for field in attrs.fields(cls):
            name = codec.key_name(cls, field.name)
            found += numbers(getattr(obj, field.name), f"{pattern}.{name}".lstrip("."), f"{path}.{name}".lstrip("."))
    return found


def _check_ranges(config: Config) -> None:
    for pattern, path, value in numbers(config):
        low, high = RANGES.get(pattern, (-math.inf, math.inf))
        if not low <= value <= high:
            raise ConfigError(
                path, f"must be between {_show_number(low)} and {_show_number(high)}, got {_show_number(value)}"
            )


def check(config: Config, channels: Collection[str] | None = None) -> Config:
    """Rules that types cannot say: numbers within their ranges, references that resolve.

    `channels`: the channel names this version speaks (`channels.registry.NAMES`). Policy sits
    below the channels and names none of them, so its callers hand the names in; given, an
    unknown `channels.<name>` is refused first, before the errors a typo would cause further on
    (an account's missing keys, an agent bound to no known channel)."""
    _check_ranges(config)
    for name, model in config.models.items():
        path = f"models.{name}"
        if model.provider is None and model.base_url is None and (model.model or model.api_key_env):
            # Without this, `config set models.gpt.model gpt-4o` would quietly make an echo model.
            raise ConfigError(
                f"{path}.baseUrl",
                'a model needs a provider: set baseUrl (an OpenAI-compatible endpoint) or provider "echo"',
            )
        if model.kind == "openai":
            if not model.base_url:
                raise ConfigError(f"{path}.baseUrl", "required for an OpenAI-compatible model")
            if not model.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{path}.baseUrl", f"must be an http(s) URL, got {model.base_url!r}")
            if not model.model:
                raise ConfigError(f"{path}.model", "required for an OpenAI-compatible model")
    for channel, ch in config.channels.items():
        if channels is not None and channel not in channels:
            raise ConfigError(f"channels.{channel}", f"unknown channel; known: {', '.join(channels)}")
        for account_id, account in ch.accounts.items():
            if channel != "console" and not account.base_url:
                raise ConfigError(f"channels.{channel}.accounts.{account_id}.baseUrl", "required")
    if not config.agents:
        raise ConfigError("agents", "at least one agent is required")
    for name, agent in config.agents.items():
        path = f"agents.{name}"
        if agent.model not in config.models:
            raise ConfigError(f"{path}.model", f"no model named {agent.model!r} in models")
        if not agent.channels:
            raise ConfigError(f"{path}.channels", "at least one bound channel is required")
        for i, channel in enumerate(agent.channels):
            if channel != "console" and channel not in config.channels:
                raise ConfigError(f"{path}.channels[{i}]", f"channel {channel!r} is not configured under channels")
        _check_allow_list(config.tools, f"{path}.tools", agent.tools)
    _check_tools(config.tools)
    d = config.delivery
    if d.max_backoff_seconds < d.initial_backoff_seconds:
        raise ConfigError("delivery.maxBackoffSeconds", "must be at least initialBackoffSeconds")
    _check_cluster(config.cluster)
    seen: set[str] = set()
    for i, entry in enumerate(config.cron):
        if entry.id in seen:
            raise ConfigError(f"cron[{i}].id", f"duplicate id {entry.id!r}")
        seen.add(entry.id)
        if entry.agent not in config.agents:
            raise ConfigError(f"cron[{i}].agent", f"no agent named {entry.agent!r}")
    return config


def _check_cluster(c: ClusterConfig) -> None:
    # The numbers' ranges are in RANGES; what is left relates them or checks text.
    if c.dead_after_seconds <= c.heartbeat_seconds:
        raise ConfigError("cluster.deadAfterSeconds", "must be longer than heartbeatSeconds")
    if not c.dsn_env:
        raise ConfigError("cluster.dsnEnv", "must name an environment variable")
    if c.node_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}", c.node_id):
        raise ConfigError("cluster.nodeId", f"letters, digits and _.:- only, got {c.node_id!r}")


# A server name becomes the `<server>__<tool>` prefix the model sees (OpenAI function names
# are [A-Za-z0-9_-]{1,64}); no "__" inside it, so the split back is unambiguous.
_MCP_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,30}(?:_[A-Za-z0-9-]+)*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_tools(tools: ToolsConfig) -> None:
    for name, server in tools.mcp_servers.items():
        path = f"tools.mcpServers.{name}"
        if not _MCP_SERVER_NAME.fullmatch(name) or "__" in name:
            raise ConfigError(path, "a server name is letters, digits, '-' and single '_' (at most 31 characters)")
        if (server.command is None) == (server.url is None):
            raise ConfigError(path, "needs exactly one of command (stdio) or url (streamable HTTP)")
        if server.command is not None and (not server.command or not server.command[0]):
            raise ConfigError(f"{path}.command", "must be a non-empty list: the program, then its arguments")
        if server.url is not None and not server.url.startswith(("http://", "https://")):
            raise ConfigError(f"{path}.url", f"must be an http(s) URL, got {server.url!r}")
        for key in ("env", "env_from"):
            if server.url is not None and getattr(server, key):
                raise ConfigError(f"{path}.{codec.camel(key)}", "only for a stdio server (command)")
        for var, source in server.env_from.items():
            if not _ENV_NAME.fullmatch(var) or not _ENV_NAME.fullmatch(source):
                raise ConfigError(f"{path}.envFrom.{var}", f"must map a variable name to one, got {source!r}")
        if server.command is not None and server.headers_env:
            raise ConfigError(f"{path}.headersEnv", "only for a streamable HTTP server (url)")
        for header, var in server.headers_env.items():
            if not _ENV_NAME.fullmatch(var):
                raise ConfigError(f"{path}.headersEnv.{header}", f"must name an environment variable, got {var!r}")
    for i, host in enumerate(tools.http.allow_hosts):
        if not host or "/" in host or host != host.strip().lower():
            raise ConfigError(f"tools.http.allowHosts[{i}]", f"must be a lowercase host name, got {host!r}")


def _check_allow_list(tools: ToolsConfig, path: str, allowed: list[str]) -> None:
    for i, entry in enumerate(allowed):
        if entry in ("http_request", "spawn_subagent"):
            continue
        server, dot, tool = entry.partition(".")
        if not dot or not tool:
            raise ConfigError(f"{path}[{i}]", f"expected server.* or server.tool or http_request, got {entry!r}")
        if server not in tools.mcp_servers:
            raise ConfigError(f"{path}[{i}]", f"no MCP server named {server!r} under tools.mcpServers")


def parse(raw: object, channels: Collection[str] | None = None) -> Config:
    """Structure and check a decoded `gateway.json` (`channels`: see `check`). The built-in
    `default` echo model stays available unless the file names its own `default`."""
    config = codec.structure_input(raw, Config)
    if "default" not in config.models:
        config = attrs.evolve(config, models={**_default_models(), **config.models})
    return check(config, channels)


def to_json(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = codec.unstructure(config)
    return result


# --- dotted keys (`config get` / `config set`) ----------------------------------------------


def _split_key(key: str) -> list[str]:
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(key or "(empty key)", "not a dotted key like gateway.drain.timeoutSeconds")
    return parts


def get_key(raw: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key: from the file when set there, else the built-in default."""
    parts = _split_key(key)
    merged = to_json(parse(raw))
    node: Any = merged
    for i, part in enumerate(parts):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
            continue
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
            continue
        raise ConfigError(".".join(parts[: i + 1]), "no such key")
    return node


def parse_value(text: str) -> Any:
    """`config set` values: JSON when they parse as JSON, else the text as a string."""
    try:
        return strict_json.loads(text)
    except strict_json.JsonInputError:
        return text


def unset_key(
    raw: Mapping[str, Any], key: str, channels: Collection[str] | None = None
) -> tuple[dict[str, Any], Config]:
    """A new raw document without `key` (the built-in default applies again), objects it leaves
    empty removed, and its parsed config; raises, writing nothing, if the result is not valid."""
    parts = _split_key(key)
    new: dict[str, Any] = json.loads(json.dumps(raw))
    trail: list[dict[str, Any]] = [new]
    for part in parts[:-1]:
        child = trail[-1].get(part)
        if not isinstance(child, dict):
            raise ConfigError(key, "is not set in gateway.json; nothing to unset")
        trail.append(child)
    if parts[-1] not in trail[-1]:
        raise ConfigError(key, "is not set in gateway.json; nothing to unset")
    del trail[-1][parts[-1]]
    for parent, part, child in reversed(list(zip(trail, parts, trail[1:], strict=False))):
        if not child:
            del parent[part]
    return new, parse(new, channels)


def set_key(
    raw: Mapping[str, Any], key: str, value: Any, channels: Collection[str] | None = None
) -> tuple[dict[str, Any], Config]:
    """A new raw document with `key` set, and its parsed config. Raises before returning
    anything when the whole new document would not be valid, so a caller writes all or nothing."""
    parts = _split_key(key)
    new: dict[str, Any] = json.loads(json.dumps(raw))
    node: Any = new
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None:
            child = {}
            node[part] = child
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is not an object; cannot set a key inside it")
        node = child
    node[parts[-1]] = value
    return new, parse(new, channels)
