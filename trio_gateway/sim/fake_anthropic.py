"""A fake Anthropic Messages API (`POST /v1/messages`): the fake model server (`fake_model.py`)
speaking Anthropic's protocol, every behaviour included (echo and tool use by the echo rule,
delays, stalls, `/overloaded` as HTTP 529 with `retry-after`, `/pings` as a stream of `ping`
events and nothing else, `/error-after K` as an `overloaded_error` event mid-stream).

    fake = FakeAnthropic()                       # in-process: AnthropicModel(config, env, fake.transport())
    url = await nursery.start(serve_fake_model, fake)   # on loopback: the model's baseUrl
    python -m trio_gateway.sim.fake_anthropic --mode pings   # a process; prints its URL

Requests are read back into the session's messages with the client's own translation
(`models.anthropic.from_anthropic`), so what the fake answers is what the gateway sent.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from trio_gateway.models.anthropic import from_anthropic
from trio_gateway.models.base import Message, ModelReply
from trio_gateway.sim.fake_model import FakeModel, Wire, fragments, main, sse, words

__all__ = ["ANTHROPIC", "AnthropicWire", "FakeAnthropic"]


class AnthropicWire:
    """The Messages API: one `message` object, or its server-sent events."""

    path = "/v1/messages"
    overloaded_status = 529

    def conversation(self, body: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
        return from_anthropic(body)

    def completion(self, reply: ModelReply, model: str) -> bytes:
        body = {**_message(reply, model, final=True), "content": _blocks(reply)}
        return json.dumps(body).encode()

    def stream(self, reply: ModelReply, model: str) -> list[bytes]:
        """message_start, a block per text and tool use (text a word per delta, tool input in
        `input_json_delta` fragments), message_delta with the usage, message_stop; one ping
        after the start, as the API does."""
        events = [sse({"type": "message_start", "message": _message(reply, model, final=False)}, "message_start")]
        events.append(self.keep_alive())
        for index, block in enumerate(_blocks(reply)):
            events += _block_events(index, block)
        stop = "tool_use" if reply.tool_calls else "end_turn"
        delta = {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}}
        events.append(sse({**delta, "usage": {"output_tokens": reply.usage.output}}, "message_delta"))
        events.append(sse({"type": "message_stop"}, "message_stop"))
        return events

    def error(self, status: int) -> bytes:
        kind = {429: "rate_limit_error", 529: "overloaded_error", 404: "not_found_error"}.get(status, "api_error")
        return json.dumps(
            {"type": "error", "error": {"type": kind, "message": f"fake model failure {status}"}}
        ).encode()

    def keep_alive(self) -> bytes:
        return sse({"type": "ping"}, "ping")

    def stream_error(self) -> bytes:
        return sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")


def _message(reply: ModelReply, model: str, *, final: bool) -> dict[str, Any]:
    usage = reply.usage
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": ("tool_use" if reply.tool_calls else "end_turn") if final else None,
        "stop_sequence": None,
        "usage": {"input_tokens": usage.input, "output_tokens": usage.output if final else 1},
    }


def _blocks(reply: ModelReply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
    blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.arguments} for c in reply.tool_calls]
    return blocks


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    start: dict[str, Any]
    if block["type"] == "text":
        start = {"type": "text", "text": ""}
        deltas = [{"type": "text_delta", "text": w} for w in words(block["text"])]
    else:
        start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments(json.dumps(block["input"]))]
    events = [sse({"type": "content_block_start", "index": index, "content_block": start}, "content_block_start")]
    events += [sse({"type": "content_block_delta", "index": index, "delta": d}, "content_block_delta") for d in deltas]
    events.append(sse({"type": "content_block_stop", "index": index}, "content_block_stop"))
    return events


ANTHROPIC: Wire = AnthropicWire()


@attrs.define(eq=False)
class FakeAnthropic(FakeModel):
    """The fake model server speaking the Messages API (see `FakeModel` for the rest)."""

    wire: Wire = ANTHROPIC


if __name__ == "__main__":
    main(wire=ANTHROPIC, prog="python -m trio_gateway.sim.fake_anthropic")
