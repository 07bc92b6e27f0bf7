"""An OpenAI-compatible `/chat/completions` client: one reused HTTP client per model endpoint.

Progress is recorded by the call itself, so the stall watchdog judges real movement:
`model_call:connected` and `model_call:request_sent` (from the HTTP library's trace hook),
`model_call:headers`, `model_call:first_token` at the first streamed chunk and
`model_call:streaming` at every chunk after.

`request_timeout_seconds` bounds inactivity (connect, each read, each write, the wait for a pool
slot), never the whole call: a stream that keeps moving runs as long as it moves. Whole-call
limits are the stall watchdog's and the drain's, by cancelling the unit's scope; the response is
then closed by `async with`, which closes its upstream connection (tests/test_http_pool.py).

The API key is read from the environment variable named by `api_key_env`, sent only in the
Authorization header, and scrubbed from every error text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.errors import ModelCallError
from trio_gateway.models.base import Message, ModelReply, Progress, ToolCall
from trio_gateway.policy.config import ModelConfig

ERROR_SNIPPET_CHARS = 200
# Concurrent calls per model endpoint. Calls beyond it wait in trio (a Semaphore), not in the
# connection pool: cancelling a waiter in httpcore's pool queue scans the whole pool, so a
# drain that aborts 10,000 queued calls there took seconds (scripts/bench_restart.py).
MAX_CONCURRENT_CALLS = 100
_ERROR_BODY_LIMIT = 4096


class OpenAIModel:
    def __init__(
        self, config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None = None
    ) -> None:
        if not config.base_url:
            raise ModelCallError("an OpenAI-compatible model needs a baseUrl")
        self._config = config
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._key = env.get(config.api_key_env) if config.api_key_env else None
        headers = {"authorization": f"Bearer {self._key}"} if self._key else {}
        # One timeout value for every phase: each is a bound on silence, not on total duration.
        timeout = http.Timeout(config.request_timeout_seconds)
        limits = http.Limits(max_connections=MAX_CONCURRENT_CALLS, max_keepalive_connections=20)
        # Every answer capped, streamed or not: a model that never stops costs the cap.
        network = transport if transport is not None else http.AsyncHTTPTransport(limits=limits, retries=0)
        self._client = http.AsyncClient(
            headers=headers, timeout=timeout, transport=http.bounded(network, http.MODEL_BODY_BYTES)
        )
        self._slots = trio.Semaphore(MAX_CONCURRENT_CALLS)

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        self._check_key()
        payload = self._payload(messages, tools)
        trace = _progress_trace(progress)
        progress("model_call:waiting_for_slot")
        try:
            async with self._slots:
                # Getting a slot is progress: the stall clock measures the upstream's silence,
                # not the time spent queued behind other calls.
                progress("model_call:slot_acquired")
                return await self._call(payload, trace, progress)
        except http.TimeoutException as exc:
            seconds = self._config.request_timeout_seconds
            raise ModelCallError(f"model upstream silent for {seconds:g}s ({type(exc).__name__})") from None
        except http.BodyTooLarge as exc:
            raise ModelCallError(f"model upstream answer cut: {exc}") from None
        except http.TransportError as exc:
            raise ModelCallError(f"model upstream unreachable: {type(exc).__name__}: {self._scrub(str(exc))}") from None

    async def _call(self, payload: dict[str, Any], trace: Any, progress: Progress) -> ModelReply:
        async with self._client.stream("POST", self._url, json=payload, extensions={"trace": trace}) as response:
            progress("model_call:headers")
            if not response.is_success:
                raise ModelCallError(await self._status_error(response))
            if _is_event_stream(response):
                return await _read_stream(response, progress)
            return _parse_completion(_json(await response.aread()))

    async def aclose(self) -> None:
        await self._client.aclose()

    def _check_key(self) -> None:
        if self._config.api_key_env and not self._key:
            raise ModelCallError(f"environment variable {self._config.api_key_env} is not set")

    def _payload(self, messages: list[Message], tools: list[dict[str, Any]]) -> dict[str, Any]:
        payload: dict[str, Any] = {"model": self._config.model, "messages": messages, "stream": self._config.stream}
        if tools:
            payload["tools"] = tools
        return payload

    async def _status_error(self, response: http.Response) -> str:
        body = b""
        # Bounded read: an error page can be large and we only quote its start.
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= _ERROR_BODY_LIMIT:
                break
        snippet = " ".join(body.decode("utf-8", "replace").split())[:ERROR_SNIPPET_CHARS]
        return f"model upstream answered HTTP {response.status_code}: {self._scrub(snippet)}"

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _progress_trace(progress: Progress) -> Any:
    """The HTTP library's trace hook, turned into progress labels the watchdog can report."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("connect_tcp.complete"):
            progress("model_call:connected")
        elif event.endswith("send_request_body.complete"):
            progress("model_call:request_sent")

    return trace


def _is_event_stream(response: http.Response) -> bool:
    # Some servers ignore `stream: true` and answer with one JSON body: accept either.
    return response.headers.get("content-type", "").startswith("text/event-stream")


def _json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ModelCallError("model upstream sent something that is not JSON") from None


# --- non-streaming ---------------------------------------------------------------------------


def _parse_completion(body: Any) -> ModelReply:
    try:
        message = body["choices"][0]["message"]
        calls = tuple(
            _tool_call(c["id"], c["function"]["name"], c["function"].get("arguments"))
            for c in message.get("tool_calls") or []
        )
        return ModelReply(_text(message.get("content"), bool(calls)), calls)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ModelCallError(f"model upstream sent an unexpected completion: {_shape(body)}") from None


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


def _shape(body: Any) -> str:
    return json.dumps(body)[:ERROR_SNIPPET_CHARS] if isinstance(body, dict | list) else type(body).__name__


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

    def add(self, chunk: Any) -> None:
        if isinstance(chunk, dict) and "error" in chunk:
            raise ModelCallError(f"model upstream sent an error mid-stream: {_shape(chunk)}")
        self.chunks += 1
        try:
            choices = chunk.get("choices") or []
            delta = choices[0].get("delta") or {} if choices else {}
            if delta.get("content"):
                self.content.append(str(delta["content"]))
            for fragment in delta.get("tool_calls") or []:
                self._add_call_fragment(fragment)
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ModelCallError(f"model upstream sent an unexpected chunk: {_shape(chunk)}") from None

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
        return ModelReply(text if text or not calls else None, calls)


async def _read_stream(response: http.Response, progress: Progress) -> ModelReply:
    acc = _StreamAccumulator()
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # SSE comments, event names, blank separators
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            break
        acc.add(_json(data))
        progress("model_call:first_token" if acc.chunks == 1 else "model_call:streaming")
    return acc.reply()
