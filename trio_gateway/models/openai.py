"""The `openai` model kind: an OpenAI-compatible `/chat/completions` endpoint (OpenAI,
OpenRouter, Ollama, vLLM, llama.cpp, LiteLLM, Gemini's compatible endpoint).

Progress is recorded by the call itself, so the stall watchdog judges real movement:
`model_call:connected` and `model_call:request_sent` (from the HTTP library's trace hook),
`model_call:headers`, `model_call:first_token` at the first streamed chunk and
`model_call:streaming` at every chunk after; an SSE comment (`: keep-alive`) is not a chunk.

The API key is read from the environment variable named by `api_key_env`, sent only in the
Authorization header, and scrubbed from every error text (`models/endpoint.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from trio_gateway import upstream as http
from trio_gateway.errors import ConfigError, ModelCallError
from trio_gateway.models.base import Message, ModelKind, ModelReply, Progress, ToolCall, Usage
from trio_gateway.models.endpoint import MAX_CONCURRENT_CALLS, Endpoint, is_event_stream, parse_json, shape, sse_data
from trio_gateway.policy.config import ModelConfig, ModelKeys

__all__ = ["KIND", "MAX_CONCURRENT_CALLS", "OpenAIModel"]


class OpenAIModel:
    def __init__(
        self, config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None = None
    ) -> None:
        if not config.base_url:
            raise ModelCallError("an OpenAI-compatible model needs a baseUrl")
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._endpoint = Endpoint(config, env, transport, lambda key: {"authorization": f"Bearer {key}"})

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        return await self._endpoint.call(self._url, self._payload(messages, tools), progress, _read_reply)

    async def aclose(self) -> None:
        await self._endpoint.aclose()

    def _payload(self, messages: list[Message], tools: list[dict[str, Any]]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self._config.model, "messages": messages, "stream": self._config.stream}
        if self._config.stream:
            # The last chunk then carries the call's usage (SPEC 16); servers without it ignore it.
            payload["stream_options"] = {"include_usage": True}
        if self._config.max_tokens is not None:
            payload["max_tokens"] = self._config.max_tokens
        if tools:
            payload["tools"] = tools
        return payload


async def _read_reply(response: http.Response, progress: Progress) -> ModelReply:
    if is_event_stream(response):
        return await _read_stream(response, progress)
    return _parse_completion(parse_json(await response.aread()))


def _check(path: str, model: ModelConfig) -> None:
    if not model.base_url:
        raise ConfigError(f"{path}.baseUrl", "required for an OpenAI-compatible model")
    if not model.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}.baseUrl", f"must be an http(s) URL, got {model.base_url!r}")
    if not model.model:
        raise ConfigError(f"{path}.model", "required for an OpenAI-compatible model")


KIND = ModelKind("openai", open=OpenAIModel, keys=ModelKeys(check=_check))


def _usage(body: Any) -> Usage:
    """`usage` as OpenAI spells it; cached prompt tokens are part of `prompt_tokens` there."""
    usage = body.get("usage") if isinstance(body, dict) else None
    if not isinstance(usage, dict):
        return Usage()
    details = usage.get("prompt_tokens_details") or {}
    cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    prompt = int(usage.get("prompt_tokens") or 0)
    return Usage(input=prompt - cached, output=int(usage.get("completion_tokens") or 0), cache_read=cached)


# --- non-streaming ---------------------------------------------------------------------------


def _parse_completion(body: Any) -> ModelReply:
    try:
        message = body["choices"][0]["message"]
        calls = tuple(
            _tool_call(c["id"], c["function"]["name"], c["function"].get("arguments"))
            for c in message.get("tool_calls") or []
        )
        return ModelReply(_text(message.get("content"), bool(calls)), calls, _usage(body))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        raise ModelCallError(f"model upstream sent an unexpected completion: {shape(body)}") from None


def _text(content: Any, has_calls: bool) -> str | None:
    if content is None:
        return None if has_calls else ""
    return str(content)


def _tool_call(call_id: Any, name: Any, arguments: Any) -> ToolCall:
    if isinstance(arguments, dict):  # a few servers send an object instead of a JSON string
        return ToolCall(str(call_id), str(name), arguments)
    try:
        parsed = json.loads(arguments or "{}")
    except ValueError:
        raise ModelCallError(f"tool call {name}: arguments are not valid JSON") from None
    if not isinstance(parsed, dict):
        raise ModelCallError(f"tool call {name}: arguments are not a JSON object")
    return ToolCall(str(call_id), str(name), parsed)


# --- streaming (SSE) -------------------------------------------------------------------------


@attrs.define
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = attrs.Factory(list)


@attrs.define
class _StreamAccumulator:
    """Deltas in, one reply out: content concatenated, tool calls assembled by index."""

    chunks: int = 0
    content: list[str] = attrs.Factory(list)
    calls: dict[int, _PartialCall] = attrs.Factory(dict)
    usage: Usage = attrs.Factory(Usage)

    def add(self, chunk: Any) -> None:
        if isinstance(chunk, dict) and "error" in chunk:
            # The upstream broke after it started: another model may do better.
            raise ModelCallError(f"model upstream sent an error mid-stream: {shape(chunk)}", failover="server_error")
        self.chunks += 1
        try:
            if chunk.get("usage"):
                self.usage = _usage(chunk)
            choices = chunk.get("choices") or []
            delta = choices[0].get("delta") or {} if choices else {}
            if delta.get("content"):
                self.content.append(str(delta["content"]))
            for fragment in delta.get("tool_calls") or []:
                self._add_call_fragment(fragment)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelCallError(f"model upstream sent an unexpected chunk: {shape(chunk)}") from None

    def _add_call_fragment(self, fragment: dict[str, Any]) -> None:
        call = self.calls.setdefault(int(fragment.get("index", 0)), _PartialCall())
        call.id = fragment.get("id") or call.id
        function = fragment.get("function") or {}
        call.name = function.get("name") or call.name
        if function.get("arguments"):
            call.arguments.append(str(function["arguments"]))

    def reply(self) -> ModelReply:
        calls = tuple(_tool_call(c.id, c.name, "".join(c.arguments)) for _, c in sorted(self.calls.items()))
        text = "".join(self.content)
        return ModelReply(text if text or not calls else None, calls, self.usage)


async def _read_stream(response: http.Response, progress: Progress) -> ModelReply:
    acc = _StreamAccumulator()
    async for data in sse_data(response.aiter_lines()):
        if data == "[DONE]":
            break
        acc.add(parse_json(data))
        progress("model_call:first_token" if acc.chunks == 1 else "model_call:streaming")
    return acc.reply()
