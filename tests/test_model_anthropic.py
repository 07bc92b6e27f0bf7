"""AnthropicModel against the in-process fake Anthropic server (no sockets, virtual clock), the
translation between the session's messages and the Messages API, and the fake judged by the
official SDK's types (so a fake that drifted from Anthropic's protocol fails here)."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pydantic
import pytest
import trio
from anthropic.types import Message as SdkMessage
from anthropic.types import RawMessageStreamEvent

from trio_gateway.errors import ModelCallError
from trio_gateway.models import AnthropicModel, build_model
from trio_gateway.models.anthropic import StreamAccumulator, from_anthropic, messages_url, to_anthropic
from trio_gateway.models.base import Message, ModelReply, ToolCall
from trio_gateway.policy.config import ModelConfig
from trio_gateway.sim.fake_anthropic import ANTHROPIC, FakeAnthropic
from trio_gateway.sim.fake_model import FakeBehaviour

KEY = "sk-ant-test-very-secret-0123456789"
READ_TOOL = {
    "type": "function",
    "function": {"name": "files__read", "description": "read a file", "parameters": {"type": "object"}},
}


@attrs.define
class Recorder:
    labels: list[str] = attrs.Factory(list)
    last_at: float = attrs.Factory(trio.current_time)

    def __call__(self, label: str) -> None:
        self.labels.append(label)
        self.last_at = trio.current_time()


def config(stream: bool = True) -> ModelConfig:
    return ModelConfig(
        provider="anthropic", base_url="http://fake.invalid", api_key_env="ANTHROPIC_KEY", model="claude-test",
        stream=stream, max_tokens=512,
    )  # fmt: skip


def anthropic_model(fake: FakeAnthropic, stream: bool = True) -> AnthropicModel:
    return AnthropicModel(config(stream), {"ANTHROPIC_KEY": KEY}, fake.transport())


def user(text: str) -> list[Message]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


@pytest.mark.parametrize("stream", [True, False])
async def test_text_reply_and_the_request_anthropic_expects(stream: bool) -> None:
    fake = FakeAnthropic()
    model = anthropic_model(fake, stream)
    reply = await model.complete(user("hello there world"), [], Recorder())
    await model.aclose()
    assert reply == ModelReply("hello there world")
    assert reply.usage.input > 0
    assert reply.usage.output > 0
    sent = fake.requests[-1]
    assert sent.path == "/v1/messages"
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in sent.headers
    assert sent.body["system"] == "be brief"
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hello there world"}]}]
    assert sent.body["max_tokens"] == 512
    assert sent.body["model"] == "claude-test"
    assert fake.open_connections.value == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_use_assembled_and_tools_sent_as_input_schema(stream: bool) -> None:
    fake = FakeAnthropic()
    model = anthropic_model(fake, stream)
    reply = await model.complete(user('/tool files__read {"path": "notes/a long name.txt"}'), [READ_TOOL], Recorder())
    assert reply.text is None
    assert reply.tool_calls == (ToolCall("call_fake_1", "files__read", {"path": "notes/a long name.txt"}),)
    tools = fake.requests[-1].body["tools"]
    assert tools == [{"name": "files__read", "description": "read a file", "input_schema": {"type": "object"}}]
    # The tool's result goes back as a tool_result block, and the model answers from it.
    history = [*user('/tool files__read {"path": "a"}'), reply.as_message()]
    history.append({"role": "tool", "tool_call_id": "call_fake_1", "content": "the file's text"})
    answer = await model.complete(history, [READ_TOOL], Recorder())
    assert answer.text == "tool files__read: the file's text"
    sent = fake.requests[-1].body["messages"]
    assert sent[1]["content"][0]["type"] == "tool_use"
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_fake_1", "content": "the file's text"}],
    }


def test_translation_merges_roles_drops_empty_text_and_round_trips() -> None:
    call = ToolCall("t1", "files__read", {"path": "a"})
    messages: list[Message] = [
        {"role": "system", "content": "one"},
        {"role": "system", "content": "two"},
        {"role": "user", "content": "read a"},
        ModelReply(None, (call,)).as_message(),
        {"role": "tool", "tool_call_id": "t1", "content": "A"},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": ""},
    ]
    system, turns = to_anthropic(messages)
    assert system == "one\n\ntwo"
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [{"type": "tool_use", "id": "t1", "name": "files__read", "input": {"path": "a"}}]
    assert [b["type"] for b in turns[2]["content"]] == ["tool_result", "text"]
    back, _ = from_anthropic({"system": system, "messages": turns})
    assert [m["role"] for m in back] == ["system", "user", "assistant", "tool", "user"]
    assert back[2]["tool_calls"][0]["function"]["name"] == "files__read"


def test_messages_url_with_or_without_v1() -> None:
    assert messages_url("https://api.anthropic.com") == "https://api.anthropic.com/v1/messages"
    assert messages_url("http://127.0.0.1:9/v1/") == "http://127.0.0.1:9/v1/messages"


async def test_pings_are_not_progress(autojump_clock: Any) -> None:
    fake = FakeAnthropic(FakeBehaviour(mode="pings", ping_interval_seconds=1.0))
    model, progress = anthropic_model(fake), Recorder()
    with trio.move_on_after(30):
        await model.complete(user("hi"), [], progress)
    assert progress.labels[-1] == "model_call:headers"
    assert trio.current_time() - progress.last_at >= 29  # thirty pings later, still no progress
    assert len(fake.requests) == 1


async def test_a_ping_between_events_keeps_the_stream_going() -> None:
    acc = StreamAccumulator()
    assert acc.add({"type": "ping"}) is False
    assert acc.add({"type": "message_start", "message": {"usage": {"input_tokens": 3}}}) is True
    assert acc.events == 1


@pytest.mark.parametrize("stream", [True, False])
async def test_overloaded_is_retryable_with_retry_after_and_names_no_key(stream: bool) -> None:
    fake = FakeAnthropic(FakeBehaviour(mode="overloaded", retry_after_seconds=7))
    model = anthropic_model(fake, stream)
    with pytest.raises(ModelCallError) as caught:
        await model.complete(user("hi"), [], Recorder())
    assert caught.value.failover == "overloaded"
    assert caught.value.retry_after == 7
    assert "529" in str(caught.value)
    assert "overloaded_error" in str(caught.value)
    assert KEY not in str(caught.value)


async def test_rate_limit_is_retryable_and_a_bad_request_is_not() -> None:
    for status, failover in ((429, "rate_limited"), (500, "server_error"), (400, None), (401, None)):
        fake = FakeAnthropic(FakeBehaviour(mode="fail", status=status))
        with pytest.raises(ModelCallError) as caught:
            await anthropic_model(fake).complete(user("hi"), [], Recorder())
        assert caught.value.failover == failover, status


async def test_error_mid_stream_is_retryable() -> None:
    fake = FakeAnthropic(FakeBehaviour(mode="error_mid_stream", error_after_chunks=3))
    with pytest.raises(ModelCallError, match="overloaded_error") as caught:
        await anthropic_model(fake).complete(user("hello there"), [], Recorder())
    assert caught.value.failover == "overloaded"


async def test_a_stream_cut_before_message_stop_is_an_error() -> None:
    acc = StreamAccumulator()
    acc.add({"type": "message_start", "message": {"usage": {}}})
    with pytest.raises(ModelCallError, match="before message_stop"):
        acc.reply()


async def test_build_model_asks_the_registry() -> None:
    fake = FakeAnthropic()
    model = build_model(config(), {"ANTHROPIC_KEY": KEY}, fake.transport())
    assert isinstance(model, AnthropicModel)
    assert (await model.complete(user("hey"), [], Recorder())).text == "hey"


# --- the fake, judged by the official SDK's types -------------------------------------------------


def _sse_events(pieces: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for piece in pieces:
        lines = piece.decode().strip().splitlines()
        assert lines[0].startswith("event: ")
        data = json.loads(lines[1].removeprefix("data: "))
        assert lines[0].removeprefix("event: ") == data["type"]  # the event name is the type
        events.append(data)
    return events


def test_fake_stream_events_parse_as_the_sdks_types() -> None:
    reply = ModelReply("two words", (ToolCall("toolu_1", "files__read", {"path": "a"}),))
    adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(RawMessageStreamEvent)
    events = _sse_events([*ANTHROPIC.stream(reply, "claude-test"), ANTHROPIC.stream_error()])
    for event in events:
        if event["type"] not in ("ping", "error"):  # the SDK's union leaves these to its stream reader
            adapter.validate_python(event, strict=False)
    assert [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"][-1] == "input_json_delta"
    SdkMessage.model_validate(json.loads(ANTHROPIC.completion(reply, "claude-test")))


@pytest.mark.e2e
def test_fake_as_a_process_speaks_to_the_official_sdk() -> None:
    """`python -m trio_gateway.sim.fake_anthropic` prints its URL; the SDK's own client streams a
    message from it and reads it whole, and sees 529 as its OverloadedError."""
    import subprocess
    import sys

    import anthropic as sdk

    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_gateway.sim.fake_anthropic", "--port", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = sdk.Anthropic(base_url=url.removesuffix("/v1"), api_key="k", max_retries=0, timeout=30)
        ask = [{"role": "user", "content": "hello from the sdk"}]
        with client.messages.stream(model="m", max_tokens=64, messages=ask) as stream:  # type: ignore[arg-type]
            final = stream.get_final_message()
        assert final.content[0].type == "text"
        assert final.content[0].text == "hello from the sdk"
        assert final.usage.output_tokens > 0
        tools = [{"name": "files__read", "input_schema": {"type": "object"}}]
        ask = [{"role": "user", "content": '/tool files__read {"path": "a"}'}]
        with client.messages.stream(model="m", max_tokens=64, messages=ask, tools=tools) as stream:  # type: ignore[arg-type]
            used = stream.get_final_message()
        assert used.stop_reason == "tool_use"
        assert used.content[0].type == "tool_use"
        assert used.content[0].input == {"path": "a"}  # assembled by the SDK from our input_json_delta
        overloaded = [{"role": "user", "content": "/overloaded hi"}]
        with pytest.raises(sdk.APIStatusError) as refused:
            client.messages.create(model="m", max_tokens=64, messages=overloaded)  # type: ignore[arg-type]
        assert refused.value.status_code == 529
    finally:
        proc.terminate()
        proc.wait(timeout=30)
