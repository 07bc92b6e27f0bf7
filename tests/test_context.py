"""The context budget (SPEC 16, `policy.context`): whole exchanges, oldest first, never half."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from trio_gateway.policy import context

SYSTEM = {"role": "system", "content": "be brief"}


def call(i: int) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": f"t{i}", "type": "function", "function": {"name": "files__read", "arguments": "{}"}}],
    }


def exchange(i: int, tool: bool = False) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "user", "content": f"question {i} " + "x" * 80}]
    if tool:
        out += [call(i), {"role": "tool", "tool_call_id": f"t{i}", "content": "y" * 200}]
    return [*out, {"role": "assistant", "content": f"answer {i}"}]


def test_no_budget_keeps_everything() -> None:
    messages = [SYSTEM, *exchange(0), *exchange(1)]
    assert context.fit(messages, None) == messages


def test_a_tool_call_and_its_result_go_together() -> None:
    messages = [SYSTEM, *exchange(0), *exchange(1, tool=True), *exchange(2)]
    sizes = [sum(map(context.estimate_tokens, exchange(i, tool=i == 1))) for i in range(3)]
    system = context.estimate_tokens(SYSTEM)
    # Room for exchange 2 and most of exchange 1 (its tool result, not its question): 1 goes whole.
    kept = context.fit(messages, system + sizes[2] + sizes[1] - 10)
    assert kept == [SYSTEM, *exchange(2)]
    kept = context.fit(messages, system + sizes[2] + sizes[1])
    assert kept == [SYSTEM, *exchange(1, tool=True), *exchange(2)]


def test_the_exchange_being_answered_stays_even_over_budget() -> None:
    messages = [SYSTEM, *exchange(0), {"role": "user", "content": "z" * 4000}]
    assert context.fit(messages, 10) == [SYSTEM, messages[-1]]


def test_tools_count_against_the_budget() -> None:
    messages = [*exchange(0), *exchange(1)]
    room = sum(map(context.estimate_tokens, messages))
    assert context.fit(messages, room) == messages
    tools = [{"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}}]
    assert context.fit(messages, room, tools) == exchange(1)


def test_budget_reserves_the_answer() -> None:
    assert context.budget(200_000, 4096) == 195_904
    assert context.budget(None, 4096) is None


@settings(max_examples=300, deadline=None)
@given(
    shape=st.lists(st.tuples(st.booleans(), st.integers(0, 300)), min_size=1, max_size=12),
    budget=st.integers(0, 2000),
)
def test_fit_keeps_a_suffix_of_whole_exchanges(shape: list[tuple[bool, int]], budget: int) -> None:
    messages: list[dict[str, Any]] = [SYSTEM]
    for i, (tool, pad) in enumerate(shape):
        block = exchange(i, tool)
        block[0] = {**block[0], "content": block[0]["content"] + "p" * pad}
        messages += block
    kept = context.fit(messages, budget)
    rest = kept[1:]
    assert kept[0] == SYSTEM
    assert rest[0]["role"] == "user"  # never starts inside an exchange
    assert messages[-len(rest) :] == rest  # a suffix: oldest dropped first, nothing reordered
    ids = {m["tool_call_id"] for m in rest if m["role"] == "tool"}
    calls = {c["id"] for m in rest for c in m.get("tool_calls") or ()}
    assert ids == calls  # every tool call with its result, every result with its call
    if len(context.exchanges(kept)[1]) > 1:
        assert sum(map(context.estimate_tokens, kept)) <= budget
