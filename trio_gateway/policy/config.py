"""The configuration (SPEC 3): a decoded `gateway.json` structured and checked.

Pure: no file or network I/O here beyond what callers hand in. Nothing is coerced (`"5"` is not a
number, `4.9` is not a port): the file is read by `codec`, the one converter of every file the
gateway reads. Its parts: `config_schema` (the classes, re-exported here, as most readers want
them with the parse), `config_checks` (the rules types cannot say), `config_keys` (dotted keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from trio_gateway.errors import ConfigError
from trio_gateway.policy import codec
from trio_gateway.policy.config_checks import RANGES, check, known_kind, numbers
from trio_gateway.policy.config_schema import (
    AccountConfig,
    AccountKind,
    AgentConfig,
    ChannelConfig,
    ClusterConfig,
    Config,
    CronEntry,
    DeliveryConfig,
    DrainConfig,
    GatewaySection,
    HttpToolConfig,
    InboundConfig,
    InboundMode,
    LoggingConfig,
    McpServerConfig,
    ModelConfig,
    Recovery,
    RecoveryConfig,
    StallConfig,
    TestEndpointsConfig,
    ToolsConfig,
    default_models,
)

__all__ = [
    "RANGES",
    "AccountConfig",
    "AccountKind",
    "AgentConfig",
    "ChannelConfig",
    "ClusterConfig",
    "Config",
    "CronEntry",
    "DeliveryConfig",
    "DrainConfig",
    "GatewaySection",
    "HttpToolConfig",
    "InboundConfig",
    "InboundMode",
    "LoggingConfig",
    "McpServerConfig",
    "ModelConfig",
    "Recovery",
    "RecoveryConfig",
    "StallConfig",
    "TestEndpointsConfig",
    "ToolsConfig",
    "check",
    "numbers",
    "parse",
    "to_json",
]


def parse(raw: object, kinds: Mapping[str, AccountKind] | None = None) -> Config:
    """Structure and check a decoded `gateway.json` (`kinds`: see `check`). Each account is
    structured as its kind's class, so a key of another kind is an unknown key there; without
    `kinds`, accounts hold the common keys only. The built-in `default` echo model stays
    available unless the file names its own `default`."""
    channels = raw.get("channels", {}) if isinstance(raw, Mapping) else {}
    rest = {k: v for k, v in raw.items() if k != "channels"} if isinstance(raw, Mapping) else raw
    config = codec.structure_input(rest, Config)
    config = attrs.evolve(config, channels=_channels(channels, kinds))
    if "default" not in config.models:
        config = attrs.evolve(config, models={**default_models(), **config.models})
    return check(config, kinds)


def _channels(raw: object, kinds: Mapping[str, AccountKind] | None) -> dict[str, ChannelConfig]:
    """`channels`, each section's accounts as its kind's class; an unknown channel is refused
    before its accounts are read (their keys would be wrong for any kind)."""
    sections = _at("channels", raw, dict[str, dict[str, Any]])
    channels = {}
    for name, section in sections.items():
        kind = known_kind(kinds, name)
        account: Any = kind.account if kind is not None else AccountConfig
        path = f"channels.{name}"
        shell = _at(path, {**section, "accounts": {}}, ChannelConfig)
        accounts = _at(f"{path}.accounts", section.get("accounts", {}), dict[str, account])
        channels[name] = attrs.evolve(shell, accounts=accounts)
    return channels


def _at(path: str, raw: object, cls: Any) -> Any:
    """`codec.structure_input` for a part of the file, its errors named from the file's top."""
    try:
        return codec.structure_input({"_": raw}, dict[str, cls])["_"]
    except ConfigError as exc:
        inner = exc.path.removeprefix("_").removeprefix(".")
        raise ConfigError(f"{path}.{inner}" if inner else path, exc.what) from None


def to_json(config: Config) -> dict[str, Any]:
    """The config as decoded JSON, every default spelled out (`config get`); each account with
    its own kind's keys."""
    result: dict[str, Any] = codec.unstructure(config)
    return result
