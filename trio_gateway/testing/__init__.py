"""Fakes for tests, ours and users' (SPEC 10): an OpenAI-compatible model server, and more.

Names are imported lazily so `python -m trio_gateway.sim.fake_model` does not import the
module twice (runpy warns when the package already imported the module it is asked to run).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trio_gateway.sim.fake_model import FakeBehaviour, FakeModel, FakeModelTransport, serve_fake_model

__all__ = ["FakeBehaviour", "FakeModel", "FakeModelTransport", "serve_fake_model"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("trio_gateway.sim.fake_model"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
