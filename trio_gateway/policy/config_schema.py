"""The configuration's schema (SPEC 3): what `gateway.json` may say, as attrs classes.

Pure. The file's spelling is the codec's (camelCase); the rules types cannot say are
`config_checks`; `config` structures a file into these classes and checks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import attrs

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


DmPolicy = Literal["pairing", "allowlist", "open", "disabled"]
GroupPolicy = Literal["mention", "open", "disabled"]


@attrs.frozen
class AccountConfig:
    """The keys every account of every channel kind may have (`channels.<name>.accounts.<id>`).

    A kind's own keys (its app id, the environment variables naming its secrets) are a subclass
    its channel module declares and hands down in an `AccountKind`: policy names no platform,
    and a key of one platform under another is an unknown key there."""

    base_url: str | None = None
    inbound: InboundConfig = InboundConfig()
    # Access (SPEC 15): who may talk to the agent. Read and checked here; enforced by issue 20.
    dm_policy: DmPolicy = "pairing"
    allow_from: list[str] = attrs.Factory(list)
    group_policy: GroupPolicy = "mention"
    groups: list[str] = attrs.Factory(lambda: ["*"])
    group_allow_from: list[str] = attrs.Factory(lambda: ["*"])
    # Replies (SPEC 15), used by issue 21. None: the platform's own limit, as it counts.
    text_chunk_limit: int | None = None
    # The one reply to a direct message without text; "" says nothing.
    unsupported_media_reply: str = "Sorry, I can only read text messages."


def _no_rules(path: str, account: AccountConfig) -> None:
    """A kind whose accounts need nothing beyond their keys' types."""


@attrs.frozen
class AccountKind:
    """What one channel kind lets its accounts say, as its channel module declares it and the
    channel registry hands it down to `config.parse` and `config_checks.check`."""

    # The class of its accounts: `AccountConfig`, or a subclass adding the kind's own keys.
    account: type[AccountConfig] = AccountConfig
    # Rules beyond types for one account (`path`: `channels.<name>.accounts.<id>`); raises
    # `ConfigError` naming the key. Secrets are checked later, with the environment.
    check: Callable[[str, AccountConfig], None] = _no_rules
    # A kind with no accounts, whose one adapter every account id reaches (`console`): an agent
    # may bind it with no `channels.<name>` section.
    standalone: bool = False


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


def default_models() -> dict[str, ModelConfig]:
    return {"default": ModelConfig(provider="echo")}


def _default_agents() -> dict[str, AgentConfig]:
    return {"main": AgentConfig()}


@attrs.frozen
class Config:
    gateway: GatewaySection = GatewaySection()
    models: dict[str, ModelConfig] = attrs.Factory(default_models)
    channels: dict[str, ChannelConfig] = attrs.Factory(dict)
    agents: dict[str, AgentConfig] = attrs.Factory(_default_agents)
    delivery: DeliveryConfig = DeliveryConfig()
    cron: list[CronEntry] = attrs.Factory(list)
    logging: LoggingConfig = LoggingConfig()
    cluster: ClusterConfig = ClusterConfig()
    tools: ToolsConfig = ToolsConfig()
