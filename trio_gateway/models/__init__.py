"""Model kinds, one module per provider (echo, openai, anthropic), listed in `registry`."""

from __future__ import annotations

from trio_gateway.models.anthropic import AnthropicModel
from trio_gateway.models.base import Model, ModelKind
from trio_gateway.models.echo import EchoModel
from trio_gateway.models.openai import OpenAIModel
from trio_gateway.models.registry import build_model

__all__ = ["AnthropicModel", "EchoModel", "Model", "ModelKind", "OpenAIModel", "build_model"]
