"""The testing kit (SPEC 10), for users' own tests as much as ours.

The fakes themselves live in `trio_gateway.sim` (scenarios use them too, so they are part of the
program, not test code); this package is where a test suite meets them: the names below, and the
pytest fixtures of `trio_gateway.testing.plugin` (registered by the `pytest11` entry point).

Names are imported lazily so `python -m trio_gateway.sim.fake_model` does not import the module
twice (runpy warns when a package already imported the module it is asked to run).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_gateway.sim.fake_anthropic import FakeAnthropic
    from trio_gateway.sim.fake_channels import FakeChannels, serve_fake_channels
    from trio_gateway.sim.fake_mcp import FakeMcpServers
    from trio_gateway.sim.fake_model import FakeBehaviour, FakeModel, FakeModelTransport, serve_fake_model
    from trio_gateway.sim.harness import Harness

_EXPORTS = {
    "FakeBehaviour": "trio_gateway.sim.fake_model",
    "FakeModel": "trio_gateway.sim.fake_model",
    "FakeModelTransport": "trio_gateway.sim.fake_model",
    "FakeAnthropic": "trio_gateway.sim.fake_anthropic",
    "serve_fake_model": "trio_gateway.sim.fake_model",
    "FakeChannels": "trio_gateway.sim.fake_channels",
    "serve_fake_channels": "trio_gateway.sim.fake_channels",
    "FakeMcpServers": "trio_gateway.sim.fake_mcp",
    "Harness": "trio_gateway.sim.harness",
}
__all__ = [
    "FakeAnthropic",
    "FakeBehaviour",
    "FakeChannels",
    "FakeMcpServers",
    "FakeModel",
    "FakeModelTransport",
    "Harness",
    "serve_fake_channels",
    "serve_fake_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
