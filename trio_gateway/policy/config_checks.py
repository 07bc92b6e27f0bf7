"""The configuration's rules that types cannot say (SPEC 3): every number within its range,
every reference resolving, every name a file name or a variable name can be.

Pure. A bad value is a `ConfigError` naming the key path in the file's own camelCase spelling
(`gateway.drain.timeoutSeconds`), so an operator can find it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from trio_gateway.errors import ConfigError
from trio_gateway.policy import codec
from trio_gateway.policy.config_schema import AccountConfig, AccountKind, ClusterConfig, Config, ToolsConfig

# Bounds: a file smaller than 64 KiB rotates every few seconds of a busy drain; one larger
# than 1 GiB is no longer something an operator opens.
_LOG_FILE_BYTES = (64 * 1024, 1024 * 1024 * 1024)
_LOG_BACKUPS = (0, 100)


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
    # A reply cut into pieces shorter than this floods the chat; no platform's limit is lower.
    "channels.*.accounts.*.textChunkLimit": (100, 1_000_000),
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


def check(config: Config, kinds: Mapping[str, AccountKind] | None = None) -> Config:
    """Rules that types cannot say: numbers within their ranges, references that resolve.

    `kinds`: the channel kinds this version speaks, by name (`channels.registry.account_kinds()`).
    Policy sits below the channels and names none of them, so its callers hand the kinds in;
    given, an unknown `channels.<name>` is refused before the errors a typo would cause further
    on (an account's missing keys, an agent bound to no known channel), and each account is held
    to its kind's rules. Without them, names and bindings go unchecked: policy cannot tell a
    standalone kind (`console`, no accounts) from a channel left out of `channels`."""
    _check_ranges(config)
    _check_models(config)
    for channel, section in config.channels.items():
        kind = known_kind(kinds, channel)
        for account_id, account in section.accounts.items():
            path = f"channels.{channel}.accounts.{account_id}"
            _check_access(path, account)
            if kind is not None:
                kind.check(path, account)
    if not config.agents:
        raise ConfigError("agents", "at least one agent is required")
    for name, agent in config.agents.items():
        path = f"agents.{name}"
        if agent.model not in config.models:
            raise ConfigError(f"{path}.model", f"no model named {agent.model!r} in models")
        if not agent.channels:
            raise ConfigError(f"{path}.channels", "at least one bound channel is required")
        for i, channel in enumerate(agent.channels):
            if _unconfigured(config, kinds, channel):
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


def known_kind(kinds: Mapping[str, AccountKind] | None, channel: str) -> AccountKind | None:
    """The kind of `channels.<channel>`; refused when the caller named the kinds and not this one."""
    if kinds is None:
        return None
    kind = kinds.get(channel)
    if kind is None:
        raise ConfigError(f"channels.{channel}", f"unknown channel; known: {', '.join(kinds)}")
    return kind


def _unconfigured(config: Config, kinds: Mapping[str, AccountKind] | None, channel: str) -> bool:
    """An agent's bound channel that cannot reach anyone: not under `channels`, and not a kind
    that needs no accounts (`console`)."""
    if kinds is None or channel in config.channels:
        return False
    kind = kinds.get(channel)
    return kind is None or not kind.standalone


def _check_models(config: Config) -> None:
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


def _check_access(path: str, account: AccountConfig) -> None:
    """SPEC 15's lists: each entry a sender, group or `*`, as the platform spells its ids."""
    for key in ("allow_from", "groups", "group_allow_from"):
        for i, entry in enumerate(getattr(account, key)):
            if not entry or entry != entry.strip() or len(entry) > _MAX_ID_CHARS:
                raise ConfigError(
                    f"{path}.{codec.camel(key)}[{i}]",
                    f"must be an id (1-{_MAX_ID_CHARS} characters, no spaces at its ends) or *, got {entry!r}",
                )


# Platform ids are short (a Telegram id has at most 20 digits, a Feishu open_id 35 characters).
_MAX_ID_CHARS = 256


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
