"""What the agent loop needs from a model: one chat completion, with progress recorded, and
what a provider is to the rest of the gateway (`ModelKind`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from trio_gateway.policy.config import ModelConfig, ModelKeys
from trio_gateway.upstream import AsyncBaseTransport

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
class Usage:
    """One call's tokens as the provider reported them (zero where it did not say)."""

    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cache_read + other.cache_read,
            self.cache_write + other.cache_write,
        )

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_read + self.cache_write

    def by_direction(self) -> dict[str, int]:
        """As `/metrics` labels them (`direction`)."""
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
        }


@attrs.frozen
class ModelReply:
    text: str | None
    tool_calls: tuple[ToolCall, ...] = ()
    # Accounting, not the answer: two replies saying the same thing are equal whatever they cost.
    usage: Usage = attrs.field(factory=Usage, eq=False)

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


# How a kind opens a client for one `models.<name>` entry: its config, the environment (the API
# key's variable) and, in tests, a transport in place of the network.
ModelOpener = Callable[[ModelConfig, Mapping[str, str], AsyncBaseTransport | None], Model]


@attrs.frozen
class ModelKind:
    """One provider, as the rest of the gateway sees it. The model registry looks a kind up by
    `models.<name>.provider` and asks it, so nothing outside the provider's module branches on
    a provider's name."""

    name: str
    open: ModelOpener
    # What its `models.<name>` entries may say and the rules `config` holds them to.
    keys: ModelKeys = attrs.Factory(ModelKeys)
