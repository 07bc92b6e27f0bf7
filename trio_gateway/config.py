"""The configuration (SPEC 3): attrs classes, a strict cattrs converter, and dotted-key access.

Pure: no file or network I/O here beyond what callers hand in. A bad value is a `ConfigError`
that names the key path in the file's own camelCase spelling (`gateway.drain.timeoutSeconds`),
so an operator can find it; nothing is coerced (`"5"` is not a number, `4.9` is not a port).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, get_args

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from trio_gateway.errors import ConfigError

Recovery = Literal["abort", "none"]
T = TypeVar("T")


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
class OriginConfig:
    channel: str | None = None
    to: str | None = None
    account_id: str | None = None
    delivery_channel: str | None = None
    context_token: str | None = None


@attrs.frozen
class CronEntry:
    id: str
    agent: str
    every_seconds: float
    prompt: str
    origin: OriginConfig | None = None


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


# Channels the gateway can speak. `console` needs no account: it appends to logs/console.jsonl.
KNOWN_CHANNELS = ("console", "feishu", "openclaw-weixin", "slack", "discord", "telegram")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


# --- the strict converter -------------------------------------------------------------------


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {json.dumps(value)}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {json.dumps(value)}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {json.dumps(value)}")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {json.dumps(value)}")
    return value


def _strict_literal(value: object, tp: Any) -> object:
    allowed = get_args(tp)
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"expected one of {', '.join(json.dumps(a) for a in allowed)}, got {json.dumps(value)}")
    return value


def make_strict_converter(*, camel_keys: bool = True) -> cattrs.Converter:
    """A JSON converter that refuses unknown keys and never coerces between types.

    The queue's entry files use the same converter (SPEC 7 is camelCase too), so one wrong
    type in a hand-edited file is an error there as well, not a silent `"5"` -> `5`.
    """
    conv = make_converter(forbid_extra_keys=True, prefer_attrib_converters=False)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook_func(lambda t: getattr(t, "__origin__", None) is Literal, _strict_literal)

    def renames(cls: type) -> dict[str, Any]:
        if not camel_keys or getattr(cls, "__snake_keys__", False):
            return {}
        return {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}

    def structure_factory(cls: type) -> Any:
        return make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames(cls))

    def unstructure_factory(cls: type) -> Any:
        return make_dict_unstructure_fn(cls, conv, **renames(cls))

    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    return conv


_CONVERTER = make_strict_converter()


def _describe(exc: BaseException, _type: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, (TypeError, ValueError)) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _spell_path(where: str) -> str:
    """`$.gateway.stalled_task_detection['x']` -> `gateway.stalledTaskDetection.x`: attribute
    names in the file's camelCase, dict keys as written, list indexes as `[i]`."""
    parts = re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[['\"]([^'\"]*)['\"]\]|\[(\d+)\]", where)
    out = ""
    for attr, key, index in parts:
        if index:
            out += f"[{index}]"
        else:
            name = key if key else (attr if attr in _SNAKE_NAMES else camel(attr))
            out += f".{name}"
    return out.lstrip(".") or "(top level)"


# Attribute names spelled snake_case in the file (the work kinds under `recovery`).
_SNAKE_NAMES = {a.name for a in attrs.fields(RecoveryConfig)}


def _first_error(exc: BaseException) -> tuple[str, str]:
    """(`key.path`, `what`) of the first problem cattrs found, in the file's own spelling."""
    lines = cattrs.transform_error(exc, path="$", format_exception=_describe)
    if not lines:
        return "(top level)", str(exc)
    what, _, where = lines[0].rpartition(" @ ")
    return _spell_path(where), what


def structure(raw: object, cls: type[T]) -> T:
    """Structure `raw` into `cls` or raise `ConfigError` naming the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return _CONVERTER.structure(raw, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(*_first_error(exc)) from None


def unstructure(obj: object) -> Any:
    return _CONVERTER.unstructure(obj)


# --- rules beyond types ---------------------------------------------------------------------


def _positive(path: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(path, f"must be a positive number, got {value:g}")


def check(config: Config) -> Config:
    """Rules that types cannot say: positive timeouts, references that resolve."""
    g = config.gateway
    _positive("gateway.drain.timeoutSeconds", g.drain.timeout_seconds)
    _positive("gateway.drain.progressIntervalSeconds", g.drain.progress_interval_seconds)
    _positive("gateway.drain.cleanupTimeoutSeconds", g.drain.cleanup_timeout_seconds)
    _positive("gateway.channelStopTimeoutSeconds", g.channel_stop_timeout_seconds)
    _positive("gateway.stalledTaskDetection.thresholdSeconds", g.stalled_task_detection.threshold_seconds)
    _positive("gateway.stalledTaskDetection.checkIntervalSeconds", g.stalled_task_detection.check_interval_seconds)
    _positive("gateway.maxBodyBytes", g.max_body_bytes)
    if not 0 <= g.port <= 65535:
        raise ConfigError("gateway.port", f"must be 0..65535, got {g.port}")
    for name, model in config.models.items():
        path = f"models.{name}"
        _positive(f"{path}.requestTimeoutSeconds", model.request_timeout_seconds)
        if model.kind == "openai":
            if not model.base_url:
                raise ConfigError(f"{path}.baseUrl", "required for an OpenAI-compatible model")
            if not model.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"{path}.baseUrl", f"must be an http(s) URL, got {model.base_url!r}")
            if not model.model:
                raise ConfigError(f"{path}.model", "required for an OpenAI-compatible model")
    for channel, ch in config.channels.items():
        if channel not in KNOWN_CHANNELS:
            raise ConfigError(f"channels.{channel}", f"unknown channel; known: {', '.join(KNOWN_CHANNELS)}")
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
        if not 1 <= agent.max_subagent_depth <= 16:
            raise ConfigError(f"{path}.maxSubagentDepth", "must be 1..16")
        if agent.max_tool_rounds < 1:
            raise ConfigError(f"{path}.maxToolRounds", "must be at least 1")
    d = config.delivery
    if d.max_attempts < 1:
        raise ConfigError("delivery.maxAttempts", "must be at least 1")
    if d.concurrency < 1:
        raise ConfigError("delivery.concurrency", "must be at least 1")
    _positive("delivery.initialBackoffSeconds", d.initial_backoff_seconds)
    _positive("delivery.maxBackoffSeconds", d.max_backoff_seconds)
    _positive("delivery.maxTotalRetrySeconds", d.max_total_retry_seconds)
    _positive("delivery.attemptTimeoutSeconds", d.attempt_timeout_seconds)
    _positive("delivery.rescanIntervalSeconds", d.rescan_interval_seconds)
    if d.max_backoff_seconds < d.initial_backoff_seconds:
        raise ConfigError("delivery.maxBackoffSeconds", "must be at least initialBackoffSeconds")
    seen: set[str] = set()
    for i, entry in enumerate(config.cron):
        if entry.id in seen:
            raise ConfigError(f"cron[{i}].id", f"duplicate id {entry.id!r}")
        seen.add(entry.id)
        if entry.agent not in config.agents:
            raise ConfigError(f"cron[{i}].agent", f"no agent named {entry.agent!r}")
        _positive(f"cron[{i}].everySeconds", entry.every_seconds)
    return config


def parse(raw: object) -> Config:
    """Structure and check a decoded `gateway.json`. The built-in `default` echo model stays
    available unless the file names its own `default`."""
    config = structure(raw, Config)
    if "default" not in config.models:
        config = attrs.evolve(config, models={**_default_models(), **config.models})
    return check(config)


def parse_text(text: str, source: str = "gateway.json") -> Config:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    return parse(raw)


def to_json(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = unstructure(config)
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
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def set_key(raw: Mapping[str, Any], key: str, value: Any) -> tuple[dict[str, Any], Config]:
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
    return new, parse(new)
