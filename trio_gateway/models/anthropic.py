"""The `anthropic` model kind: Anthropic's Messages API (`POST /v1/messages`, SPEC 16).

The session's history stays in one format, the OpenAI-shaped messages every other part of the
gateway reads (`models/base.py`); this module translates at the edge, both ways:

- out: system messages become `system`; an assistant's `tool_calls` become `tool_use` blocks;
  `tool` messages become `tool_result` blocks in a user message; consecutive messages of one
  role are merged (the API wants user and assistant to alternate); tools go as `input_schema`;
- back: `text` blocks are the reply's text, `tool_use` blocks its tool calls
  (`from_anthropic` turns a whole request back, which the fake server in `sim/` uses).

Streaming: `content_block_delta` carries `text_delta` and `input_json_delta` (a tool's input
as JSON fragments, assembled per block index); every event counts as progress except `ping`,
a keep-alive, so a stream that only pings is stalled to the watchdog. An `error` event (an
`overloaded_error` mid-stream) and HTTP 429 / 529 may be answered by the next model, after the
`retry-after` the upstream asked for (`runtime/model_calls.py`).

The API key goes only in `x-api-key` and is scrubbed from every error text (`models/endpoint.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from trio_gateway import upstream as http
from trio_gateway.errors import ConfigError, ModelCallError
from trio_gateway.models.base import Message, ModelKind, ModelReply, Progress, ToolCall, Usage
from trio_gateway.models.endpoint import Endpoint, is_event_stream, parse_json, shape, sse_data
from trio_gateway.policy.config import ModelConfig, ModelKeys

API_VERSION = "2023-06-01"
DEFAULT_BASE_URL = "https://api.anthropic.com"
# The API requires `max_tokens`; this is the answer's cap when the model entry names none.
DEFAULT_MAX_TOKENS = 4096
# SPEC 16: which mid-stream errors another model may answer (the HTTP statuses are endpoint's).
_FAILOVER_BY_ERROR = {
    "overloaded_error": "overloaded",
    "rate_limit_error": "rate_limited",
    "api_error": "server_error",
    "timeout_error": "timeout",
}


class AnthropicModel:
    def __init__(
        self, config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        self._url = messages_url(config.base_url or DEFAULT_BASE_URL)
        headers = {"anthropic-version": API_VERSION}
        self._endpoint = Endpoint(config, env, transport, lambda key: {"x-api-key": key}, headers)

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        return await self._endpoint.call(self._url, self._payload(messages, tools), progress, _read_reply)

    async def aclose(self) -> None:
        await self._endpoint.aclose()

    def _payload(self, messages: list[Message], tools: list[dict[str, Any]]) -> dict[str, Any]:
        system, turns = to_anthropic(messages)
        payload: dict[str, Any] = {
            "model": self._config.model,
            "max_tokens": self._config.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": turns,
            "stream": self._config.stream,
        }
        if system:
            payload["system"] = system
        if tools:
            payload["tools"] = [tool_to_anthropic(t) for t in tools]
        return payload


def messages_url(base_url: str) -> str:
    """`/v1/messages` under the base URL, which may or may not already end in `/v1`."""
    base = base_url.rstrip("/")
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


def _check(path: str, model: ModelConfig) -> None:
    if model.base_url is not None and not model.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}.baseUrl", f"must be an http(s) URL, got {model.base_url!r}")
    if not model.model:
        raise ConfigError(f"{path}.model", "required for an Anthropic model (claude-sonnet-4-5, ...)")


KIND = ModelKind("anthropic", open=AnthropicModel, keys=ModelKeys(check=_check))


# --- the session's messages -> the Messages API ---------------------------------------------------


def to_anthropic(messages: list[Message]) -> tuple[str, list[dict[str, Any]]]:
    """(system, messages) as the Messages API takes them."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "system":
            system.append(_text_of(message.get("content")))
            continue
        blocks = _blocks(message)
        if not blocks:
            continue
        wire_role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == wire_role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": wire_role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.get("role") == "tool":
        result = _text_of(message.get("content"))
        return [{"type": "tool_result", "tool_use_id": str(message.get("tool_call_id", "")), "content": result}]
    text = _text_of(message.get("content"))
    # The API refuses an empty text block (an assistant turn that only called tools has none).
    blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append(
            {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": _input(function)}
        )
    return blocks


def _input(function: dict[str, Any]) -> Any:
    arguments = function.get("arguments") or "{}"
    try:
        return json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        return {}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def tool_to_anthropic(tool: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI function tool as the Messages API spells it."""
    function = tool.get("function") or {}
    out = {"name": function.get("name"), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


# --- the Messages API -> the session's messages (what the fake server reads) ---------------------


def from_anthropic(body: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
    """A Messages API request as the session's messages and OpenAI-shaped tools."""
    messages: list[Message] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for turn in body.get("messages") or []:
        messages += _turn_back(turn)
    tools = [
        {"type": "function", "function": {"name": t.get("name"), "parameters": t.get("input_schema")}}
        for t in body.get("tools") or []
    ]
    return messages, tools


def _turn_back(turn: dict[str, Any]) -> list[Message]:
    content = turn.get("content")
    role = turn.get("role")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [b for b in content or [] if isinstance(b, dict)]
    out: list[Message] = [
        {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": _text_of(b.get("content"))}
        for b in blocks
        if b.get("type") == "tool_result"
    ]
    text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    calls = tuple(
        ToolCall(str(b["id"]), str(b["name"]), b.get("input") or {}) for b in blocks if b.get("type") == "tool_use"
    )
    if role == "assistant":
        out.append(ModelReply(text or None, calls).as_message())
    elif text:
        out.append({"role": "user", "content": text})
    return out


# --- replies ------------------------------------------------------------------------------------


async def _read_reply(response: http.Response, progress: Progress) -> ModelReply:
    if is_event_stream(response):
        return await _read_stream(response, progress)
    return parse_message(parse_json(await response.aread()))


def parse_message(body: Any) -> ModelReply:
    """A whole `message` (non-streaming)."""
    try:
        blocks = body["content"]
        text = "".join(str(b["text"]) for b in blocks if b["type"] == "text")
        calls = tuple(_tool_call(b["id"], b["name"], b.get("input")) for b in blocks if b["type"] == "tool_use")
        return ModelReply(text if text or not calls else None, calls, usage_of(body.get("usage")))
    except (KeyError, TypeError, AttributeError):
        raise ModelCallError(f"model upstream sent an unexpected message: {shape(body)}") from None


def usage_of(usage: Any) -> Usage:
    if not isinstance(usage, dict):
        return Usage()
    return Usage(
        input=int(usage.get("input_tokens") or 0),
        output=int(usage.get("output_tokens") or 0),
        cache_read=int(usage.get("cache_read_input_tokens") or 0),
        cache_write=int(usage.get("cache_creation_input_tokens") or 0),
    )


def _tool_call(call_id: Any, name: Any, arguments: Any) -> ToolCall:
    if not isinstance(arguments, dict):
        raise ModelCallError(f"tool call {name}: input is not a JSON object")
    return ToolCall(str(call_id), str(name), arguments)


@attrs.define
class _Block:
    type: str
    id: str = ""
    name: str = ""
    parts: list[str] = attrs.Factory(list)


@attrs.define
class StreamAccumulator:
    """Events in, one reply out: text concatenated, each tool's input JSON assembled by block."""

    events: int = 0
    blocks: dict[int, _Block] = attrs.Factory(dict)
    usage: Usage = attrs.Factory(Usage)
    done: bool = False

    def add(self, event: Any) -> bool:
        """Take one event; True when it is progress (anything but a `ping`)."""
        try:
            kind = event["type"]
            if kind == "ping":
                return False
            self.events += 1
            self._HANDLERS.get(kind, _ignore)(self, event)
        except (KeyError, TypeError, AttributeError, ValueError):
            raise ModelCallError(f"model upstream sent an unexpected event: {shape(event)}") from None
        return True

    def _start(self, event: Any) -> None:
        self.usage = usage_of(event["message"].get("usage"))

    def _block_start(self, event: Any) -> None:
        block = event["content_block"]
        self.blocks[int(event["index"])] = _Block(block["type"], str(block.get("id", "")), str(block.get("name", "")))
        if block["type"] == "text" and block.get("text"):
            self.blocks[int(event["index"])].parts.append(str(block["text"]))

    def _delta(self, event: Any) -> None:
        delta = event["delta"]
        block = self.blocks[int(event["index"])]
        if delta["type"] == "text_delta":
            block.parts.append(str(delta["text"]))
        elif delta["type"] == "input_json_delta":
            block.parts.append(str(delta["partial_json"]))

    def _message_delta(self, event: Any) -> None:
        # `usage.output_tokens` here is the running total, not an increment.
        usage = event.get("usage") or {}
        if "output_tokens" in usage:
            self.usage = attrs.evolve(self.usage, output=int(usage["output_tokens"]))

    def _stop(self, event: Any) -> None:
        self.done = True

    def _error(self, event: Any) -> None:
        error = event.get("error") or {}
        kind = str(error.get("type", "error"))
        message = str(error.get("message", ""))[:200]
        raise ModelCallError(f"model upstream sent an error mid-stream: {kind}: {message}", failover=_failover(kind))

    _HANDLERS: ClassVar[dict[str, Callable[[StreamAccumulator, Any], None]]] = {
        "message_start": _start,
        "content_block_start": _block_start,
        "content_block_delta": _delta,
        "message_delta": _message_delta,
        "message_stop": _stop,
        "error": _error,
    }

    def reply(self) -> ModelReply:
        if not self.done:
            raise ModelCallError("model upstream ended the stream before message_stop", failover="server_error")
        ordered = [b for _, b in sorted(self.blocks.items())]
        text = "".join("".join(b.parts) for b in ordered if b.type == "text")
        calls = tuple(_tool_call(b.id, b.name, _assembled(b)) for b in ordered if b.type == "tool_use")
        return ModelReply(text if text or not calls else None, calls, self.usage)


def _ignore(acc: StreamAccumulator, event: Any) -> None:
    """`content_block_stop` and events this version does not know: progress, nothing to keep."""


def _assembled(block: _Block) -> Any:
    raw = "".join(block.parts) or "{}"
    try:
        return json.loads(raw)
    except ValueError:
        raise ModelCallError(f"tool call {block.name}: input is not valid JSON") from None


def _failover(error_type: str) -> str | None:
    return _FAILOVER_BY_ERROR.get(error_type)


async def _read_stream(response: http.Response, progress: Progress) -> ModelReply:
    acc = StreamAccumulator()
    async for data in sse_data(response.aiter_lines()):
        if acc.add(parse_json(data)):
            progress("model_call:first_token" if acc.events == 1 else "model_call:streaming")
        if acc.done:
            break
    return acc.reply()
