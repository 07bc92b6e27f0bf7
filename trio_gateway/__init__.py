"""trio-gateway: a gateway between AI agents and messaging channels that never deadlocks on restart.

The public API is `__all__` below; every other module is the gateway's own business and may move.
Names are resolved on first use (PEP 562), so `import trio_gateway` costs nothing: the CLI imports
this package on every command and must not pay for trio, hypercorn or the fakes
(tests/test_layers.py). Where each room of the package is, and why: ARCHITECTURE.md.

    from trio_gateway import Config, Gateway, Origin, load_config
    from trio_gateway import Harness, FakeModel, FakeChannels   # the testing kit (SPEC 10)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Written in version.py (bottom floor: the rooms read it there, never from this package top).
from trio_gateway.version import __version__

if TYPE_CHECKING:
    from trio_gateway.channels.registry import load_config
    from trio_gateway.errors import (
        ClusterDatabaseError,
        ConfigError,
        CronSlotTakenError,
        DeliveryValidationError,
        GatewayBusyError,
        GatewayDrainingError,
        GatewayError,
        GatewayLockedError,
        GatewayUnreachableError,
        InsufficientStorageError,
        ModelCallError,
        NotFoundError,
        SessionElsewhereError,
        UsageError,
        WorkAbortedError,
    )
    from trio_gateway.policy.config import (
        AccountConfig,
        AgentConfig,
        ChannelConfig,
        ClusterConfig,
        Config,
        CronEntry,
        DeliveryConfig,
        DrainConfig,
        InboundConfig,
        LoggingConfig,
        McpServerConfig,
        ModelConfig,
        StallConfig,
        ToolsConfig,
    )
    from trio_gateway.policy.origin import Origin
    from trio_gateway.runtime.gateway import Gateway
    from trio_gateway.sim.fake_channels import FakeChannels, serve_fake_channels
    from trio_gateway.sim.fake_mcp import FakeMcpServers
    from trio_gateway.sim.fake_model import FakeBehaviour, FakeModel, serve_fake_model
    from trio_gateway.sim.harness import Harness

# name -> (module, attribute there)
_EXPORTS: dict[str, tuple[str, str]] = {
    # the running gateway and what it is given
    "Gateway": ("trio_gateway.runtime.gateway", "Gateway"),
    "Origin": ("trio_gateway.policy.origin", "Origin"),
    "load_config": ("trio_gateway.channels.registry", "load_config"),
    **{
        name: ("trio_gateway.policy.config", name)
        for name in (
            "Config",
            "AccountConfig",
            "AgentConfig",
            "ChannelConfig",
            "ClusterConfig",
            "CronEntry",
            "DeliveryConfig",
            "DrainConfig",
            "InboundConfig",
            "LoggingConfig",
            "McpServerConfig",
            "ModelConfig",
            "StallConfig",
            "ToolsConfig",
        )
    },
    # the errors a caller can catch (each carries its exit code and HTTP status)
    **{
        name: ("trio_gateway.errors", name)
        for name in (
            "GatewayError",
            "ConfigError",
            "UsageError",
            "DeliveryValidationError",
            "GatewayBusyError",
            "GatewayDrainingError",
            "GatewayLockedError",
            "GatewayUnreachableError",
            "InsufficientStorageError",
            "ModelCallError",
            "NotFoundError",
            "WorkAbortedError",
            "ClusterDatabaseError",
            "CronSlotTakenError",
            "SessionElsewhereError",
        )
    },
    # the testing kit's entry points (SPEC 10); the pytest fixtures come with the plugin
    "Harness": ("trio_gateway.sim.harness", "Harness"),
    "FakeModel": ("trio_gateway.sim.fake_model", "FakeModel"),
    "FakeBehaviour": ("trio_gateway.sim.fake_model", "FakeBehaviour"),
    "serve_fake_model": ("trio_gateway.sim.fake_model", "serve_fake_model"),
    "FakeChannels": ("trio_gateway.sim.fake_channels", "FakeChannels"),
    "serve_fake_channels": ("trio_gateway.sim.fake_channels", "serve_fake_channels"),
    "FakeMcpServers": ("trio_gateway.sim.fake_mcp", "FakeMcpServers"),
}

__all__ = [
    "AccountConfig",
    "AgentConfig",
    "ChannelConfig",
    "ClusterConfig",
    "ClusterDatabaseError",
    "Config",
    "ConfigError",
    "CronEntry",
    "CronSlotTakenError",
    "DeliveryConfig",
    "DeliveryValidationError",
    "DrainConfig",
    "FakeBehaviour",
    "FakeChannels",
    "FakeMcpServers",
    "FakeModel",
    "Gateway",
    "GatewayBusyError",
    "GatewayDrainingError",
    "GatewayError",
    "GatewayLockedError",
    "GatewayUnreachableError",
    "Harness",
    "InboundConfig",
    "InsufficientStorageError",
    "LoggingConfig",
    "McpServerConfig",
    "ModelCallError",
    "ModelConfig",
    "NotFoundError",
    "Origin",
    "SessionElsewhereError",
    "StallConfig",
    "ToolsConfig",
    "UsageError",
    "WorkAbortedError",
    "__version__",
    "load_config",
    "serve_fake_channels",
    "serve_fake_model",
]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # resolved once; later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
