"""What the agent loop needs from a model: one chat completion, with progress recorded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

# How a call says it moved ("model_call:first_token"): the stall watchdog's input. The runtime
# passes its unit's `progress`; a test passes `list.append`.
Progress = Callable[[str], None]

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
    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        """One completion. Calls `progress(label)` as it moves (request sent, headers, each
        streamed chunk). Runs in its unit's cancel scope: cancelling it must release everything
        the call holds, the upstream connection included."""
        ...

    async def aclose(self) -> None: ...
