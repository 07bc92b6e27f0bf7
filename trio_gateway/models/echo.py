"""The embedded model: answers in-process, so a gateway with no configuration runs a full turn.

The scripting rule lives here once and the fake model server (`trio_gateway.sim.fake_model`)
reuses it, so the in-process echo and the HTTP fake answer a conversation the same way:

- a user message `/spawn <agent> <task...>` is answered with a `spawn_subagent` tool call
  `{"agent": ..., "task": ...}`, when that tool is offered (a model cannot call a tool it was
  not given, e.g. a subagent at the depth limit); otherwise the text is echoed;
- a user message `/tool <name> <json arguments>` is answered with a call of that tool, when it is
  offered (`/tool files__read {"path": "a"}`); otherwise the text is echoed;
- after a tool result (the last message has role "tool") the answer is `spawned: <content>`
  for `spawn_subagent`, `tool <name>: <content>` for any other tool;
- anything else is answered with the last user message's text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.models.base import Message, ModelKind, ModelReply, Progress, ToolCall, Usage
from trio_gateway.policy.config import ModelConfig

SPAWN_TOOL = "spawn_subagent"


def _message_text(message: Message) -> str:
    """The text of a message; OpenAI also allows a list of typed parts for `content`."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _message_text(message)
    return ""


def offers_tool(tools: Sequence[dict[str, Any]], name: str) -> bool:
    return any(t.get("function", {}).get("name") == name for t in tools)


def _parse_spawn(text: str) -> tuple[str, str] | None:
    """`/spawn AGENT TASK...` -> (agent, task); None when the text is not a spawn request."""
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 3 or parts[0] != "/spawn":
        return None
    return parts[1], parts[2]


def parse_tool(text: str) -> tuple[str, dict[str, Any]] | None:
    """`/tool NAME {JSON}` -> (name, arguments); None when the text is not a tool request or
    its arguments are not a JSON object."""
    parts = text.strip().split(maxsplit=2)
    if len(parts) < 2 or parts[0] != "/tool":
        return None
    try:
        args = json.loads(parts[2]) if len(parts) == 3 else {}
    except json.JSONDecodeError:
        return None
    return (parts[1], args) if isinstance(args, dict) else None


def tool_result_reply(messages: Sequence[Message]) -> str:
    """The answer after a tool result: which tool it was comes from the assistant's call."""
    result = messages[-1]
    name = SPAWN_TOOL
    for message in reversed(messages):
        for call in message.get("tool_calls") or ():
            if call.get("id") == result.get("tool_call_id"):
                name = call.get("function", {}).get("name", SPAWN_TOOL)
    if name == SPAWN_TOOL:
        return f"spawned: {_message_text(result)}"
    return f"tool {name}: {_message_text(result)}"


def scripted_reply(messages: Sequence[Message], tools: Sequence[dict[str, Any]], call_id: str) -> ModelReply:
    """The echo rule (module docstring), shared by `EchoModel` and the fake model server."""
    if messages and messages[-1].get("role") == "tool":
        return ModelReply(tool_result_reply(messages))
    text = last_user_text(messages)
    tool = parse_tool(text)
    if tool is not None and offers_tool(tools, tool[0]):
        return ModelReply(None, (ToolCall(call_id, tool[0], tool[1]),))
    spawn = _parse_spawn(text)
    if spawn is not None and offers_tool(tools, SPAWN_TOOL):
        agent, task = spawn
        return ModelReply(None, (ToolCall(call_id, SPAWN_TOOL, {"agent": agent, "task": task}),))
    return ModelReply(text)


class EchoModel:
    """In-process model with the echo rule; holds nothing, so closing it is free."""

    def __init__(self) -> None:
        self._calls = 0

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        # A checkpoint makes the call cancellable and yields, like a real call would.
        await trio.lowlevel.checkpoint()
        self._calls += 1
        progress("model_call:first_token")
        reply = scripted_reply(messages, tools, f"call_echo_{self._calls}")
        return attrs.evolve(reply, usage=estimate_usage(messages, reply))

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def estimate_usage(messages: Sequence[Message], reply: ModelReply) -> Usage:
    """What the echo model "spends": SPEC 16's estimate, 4 characters a token, so usage, the
    daily cap and `gateway status` work with no provider at all."""
    prompt = sum(len(_message_text(m)) for m in messages)
    answer = len(reply.text or "") + sum(len(c.name) + len(json.dumps(c.arguments)) for c in reply.tool_calls)
    return Usage(input=-(-prompt // 4), output=-(-answer // 4))


def _open(config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None) -> EchoModel:
    return EchoModel()


KIND = ModelKind("echo", open=_open)
