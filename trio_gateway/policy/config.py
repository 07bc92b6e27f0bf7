"""The configuration (SPEC 3): a decoded `gateway.json` structured and checked.

Pure: no file or network I/O here beyond what callers hand in. Nothing is coerced (`"5"` is not a
number, `4.9` is not a port): the file is read by `codec`, the one converter of every file the
gateway reads. Its parts: `config_schema` (the classes, re-exported here, as most readers want
them with the parse), `config_checks` (the rules types cannot say), `config_keys` (dotted keys).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import attrs

from trio_gateway.policy import codec
from trio_gateway.policy.config_checks import RANGES, check, numbers
from trio_gateway.policy.config_schema import (
    AccountConfig,
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


def parse(raw: object, channels: Collection[str] | None = None) -> Config:
    """Structure and check a decoded `gateway.json` (`channels`: see `check`). The built-in
    `default` echo model stays available unless the file names its own `default`."""
    config = codec.structure_input(raw, Config)
    if "default" not in config.models:
        config = attrs.evolve(config, models={**default_models(), **config.models})
    return check(config, channels)


def to_json(config: Config) -> dict[str, Any]:
    result: dict[str, Any] = codec.unstructure(config)
    return result
