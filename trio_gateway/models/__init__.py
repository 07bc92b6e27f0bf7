"""Model adapters: the embedded echo model and OpenAI-compatible endpoints."""

from __future__ import annotations

from collections.abc import Mapping

from trio_gateway import upstream as http
from trio_gateway.models.base import Model
from trio_gateway.models.echo import EchoModel
from trio_gateway.models.openai import OpenAIModel
from trio_gateway.policy.config import ModelConfig


def build_model(config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None = None) -> Model:
    """The model for one `models.<name>` entry; `transport` replaces the network in tests."""
    if config.kind == "echo":
        return EchoModel()
    return OpenAIModel(config, env, transport)


__all__ = ["EchoModel", "Model", "OpenAIModel", "build_model"]
