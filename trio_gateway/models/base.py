"""What the agent loop needs from a model: one chat completion, with progress recorded."""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from trio_gateway.work.units import WorkUnit

# An OpenAI chat message: {"role": ..., "content": ..., "tool_calls": ..., "tool_call_id": ...}
Message = dict[str, Any]


@attrs.frozen
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@attrs.frozen
class ModelReply:
    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()

    def as_message(self) -> Message:
        message: Message = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": _dumps(c.arguments)}}
                for c in self.tool_calls
            ]
        return message


def _dumps(obj: Any) -> str:
    import json

    return json.dumps(obj, ensure_ascii=False)


class Model(Protocol):
    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], unit: WorkUnit) -> ModelReply:
        """One completion. Runs inside `unit`'s cancel scope; calls `unit.progress(...)` as it
        moves (request sent, headers, each streamed chunk). Cancelling the scope must release
        everything the call holds, the upstream connection included."""
        ...

    async def aclose(self) -> None: ...
