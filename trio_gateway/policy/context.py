"""The context budget (SPEC 16): before each model call the history is trimmed, oldest exchange
first and never half an exchange, so that the prompt fits `contextTokens - maxTokens`.

Pure. An exchange is a user message and everything after it up to the next user message: the
assistant's answer, its tool calls and their results. Cutting inside one would leave a tool call
without its result (which Anthropic refuses outright, and every model misreads), so exchanges go
whole. System messages stay; the last exchange (the one being answered) always stays, even when
it alone is over budget: the provider then says so, which is clearer than an empty prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

# SPEC 16: "estimated at 4 characters a token unless the provider counts".
CHARS_PER_TOKEN = 4

Message = dict[str, Any]


def estimate_tokens(obj: Any) -> int:
    """Tokens in a message (or tools list) at 4 characters a token, JSON punctuation included:
    an overestimate, so a trimmed prompt fits."""
    chars = len(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))
    return -(-chars // CHARS_PER_TOKEN)


def exchanges(messages: Sequence[Message]) -> tuple[list[Message], list[list[Message]]]:
    """(system messages, the rest cut into exchanges). Messages before the first user message
    (a history that starts with an answer) make an exchange of their own."""
    system = [m for m in messages if m.get("role") == "system"]
    groups: list[list[Message]] = []
    for message in messages:
        if message.get("role") == "system":
            continue
        if message.get("role") == "user" or not groups:
            groups.append([])
        groups[-1].append(message)
    return system, groups


def fit(messages: Sequence[Message], budget_tokens: int | None, tools: Sequence[Any] = ()) -> list[Message]:
    """`messages` with the oldest whole exchanges dropped until they (and the tools offered)
    fit `budget_tokens`; None: no budget, all of them."""
    if budget_tokens is None:
        return list(messages)
    system, groups = exchanges(messages)
    used = sum(map(estimate_tokens, system)) + (estimate_tokens(list(tools)) if tools else 0)
    sizes = [sum(map(estimate_tokens, g)) for g in groups]
    keep = len(groups)
    total = used + sum(sizes)
    while keep > 1 and total > budget_tokens:
        total -= sizes[len(groups) - keep]
        keep -= 1
    return system + [m for g in groups[len(groups) - keep :] for m in g]


def budget(context_tokens: int | None, max_tokens: int | None) -> int | None:
    """The prompt's share of the context: what is left once the answer's room is reserved."""
    if context_tokens is None:
        return None
    return context_tokens - (max_tokens or 0)
