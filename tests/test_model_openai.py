"""OpenAIModel against the in-process fake (no sockets, virtual clock), and the echo model."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
import trio

from trio_gateway import upstream as http
from trio_gateway.errors import ModelCallError
from trio_gateway.models import EchoModel, OpenAIModel, build_model
from trio_gateway.models.base import Message, ModelReply, ToolCall
from trio_gateway.policy.config import ModelConfig
from trio_gateway.testing import FakeBehaviour, FakeModel

KEY = "sk-test-very-secret-0123456789"
SPAWN_TOOLS = [{"type": "function", "function": {"name": "spawn_subagent", "parameters": {"type": "object"}}}]


@attrs.define
class Recorder:
    """A model's progress callback (`models.base.Progress`): what it said and when it last did."""

    labels: list[str] = attrs.Factory(list)
    last_at: float = attrs.Factory(trio.current_time)

    def __call__(self, label: str) -> None:
        self.labels.append(label)
        self.last_at = trio.current_time()


def model_config(stream: bool = True, timeout: float = 120.0) -> ModelConfig:
    return ModelConfig(
        base_url="http://fake.invalid/v1", api_key_env="FAKE_KEY", model="m1", stream=stream,
        request_timeout_seconds=timeout,
    )  # fmt: skip


def user(text: str) -> list[Message]:
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


@pytest.fixture
def fake() -> FakeModel:
    return FakeModel()


def openai_model(fake: FakeModel, stream: bool = True, timeout: float = 120.0) -> OpenAIModel:
    return OpenAIModel(model_config(stream, timeout), {"FAKE_KEY": KEY}, fake.transport())


@pytest.mark.parametrize("stream", [True, False])
async def test_echo_reply_and_request_shape(fake: FakeModel, stream: bool) -> None:
    model = openai_model(fake, stream)
    reply = await model.complete(user("hello there world"), [], Recorder())
    await model.aclose()
    assert reply == ModelReply("hello there world")
    sent = fake.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "m1"
    assert sent.body["stream"] is stream
    assert "tools" not in sent.body
    assert fake.open_connections.value == 0


@pytest.mark.parametrize("stream", [True, False])
async def test_tool_call_assembled_from_fragments(fake: FakeModel, stream: bool) -> None:
    model = openai_model(fake, stream)
    reply = await model.complete(user("/spawn main write a haiku about trio"), SPAWN_TOOLS, Recorder())
    assert reply.text is None
    assert reply.tool_calls == (
        ToolCall("call_fake_1", "spawn_subagent", {"agent": "main", "task": "write a haiku about trio"}),
    )
    assert fake.requests[-1].body["tools"] == SPAWN_TOOLS


def sse_transport(*events: dict[str, Any]) -> http.MockTransport:
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def handler(request: http.Request) -> http.Response:
        return http.Response(200, headers={"content-type": "text/event-stream"}, text=body)

    return http.MockTransport(handler)


def call_delta(index: int, **function: str) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": function}
    if "name" in function:
        call["id"] = f"c{index}"
    return {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]}


async def test_two_interleaved_tool_calls_assembled_by_index() -> None:
    transport = sse_transport(
        call_delta(0, name="a", arguments='{"x"'),
        call_delta(1, name="b", arguments="{}"),
        call_delta(0, arguments=": [1, "),
        call_delta(0, arguments="2]}"),
    )
    model = OpenAIModel(model_config(), {"FAKE_KEY": KEY}, transport)
    reply = await model.complete(user("hi"), SPAWN_TOOLS, Recorder())
    assert reply.tool_calls == (ToolCall("c0", "a", {"x": [1, 2]}), ToolCall("c1", "b", {}))


async def test_bad_tool_arguments_json_is_model_call_error() -> None:
    transport = sse_transport(call_delta(0, name="a", arguments='{"x": '), call_delta(0, arguments="oops"))
    model = OpenAIModel(model_config(), {"FAKE_KEY": KEY}, transport)
    with pytest.raises(ModelCallError, match="arguments are not valid JSON"):
        await model.complete(user("hi"), SPAWN_TOOLS, Recorder())


@pytest.mark.parametrize("stream", [True, False])
async def test_error_status_is_model_call_error_with_snippet(fake: FakeModel, stream: bool) -> None:
    fake.behaviour = FakeBehaviour(mode="fail", status=503)
    with pytest.raises(ModelCallError) as info:
        await openai_model(fake, stream).complete(user("hi"), [], Recorder())
    assert "HTTP 503" in str(info.value)
    assert "fake model failure 503" in str(info.value)


async def test_error_text_never_contains_the_key() -> None:
    def reflect_auth(request: http.Request) -> http.Response:  # an upstream that quotes our header back
        return http.Response(401, json={"error": f"bad header {request.headers['authorization']}"})

    model = OpenAIModel(model_config(), {"FAKE_KEY": KEY}, http.MockTransport(reflect_auth))
    with pytest.raises(ModelCallError) as info:
        await model.complete(user("hi"), [], Recorder())
    assert "HTTP 401" in str(info.value)
    assert "***" in str(info.value)
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.args)


async def test_missing_key_names_the_variable_not_a_value(fake: FakeModel) -> None:
    model = OpenAIModel(model_config(), {}, fake.transport())
    with pytest.raises(ModelCallError, match="FAKE_KEY is not set"):
        await model.complete(user("hi"), [], Recorder())
    assert fake.requests == []


async def test_slow_stream_keeps_progress_fresh_and_is_never_cut(fake: FakeModel, autojump_clock: Any) -> None:
    # 20 words, one chunk every 50 s: 1000+ s in all, far past the 120 s inactivity timeout.
    words = " ".join(f"w{i}" for i in range(20))
    model, progress = openai_model(fake, timeout=120.0), Recorder()
    worst_idle = 0.0
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal worst_idle
            while True:
                await trio.sleep(5)
                worst_idle = max(worst_idle, trio.current_time() - progress.last_at)

        nursery.start_soon(watch)
        reply = await model.complete(user(f"/slow 50 {words}"), [], progress)
        nursery.cancel_scope.cancel()
    assert reply.text == words
    # 24 SSE events (role, 20 words, finish, usage, [DONE]): 23 gaps of 50 s.
    assert trio.current_time() - start == pytest.approx(23 * 50)
    assert worst_idle <= 50
    prefix = [
        "model_call:waiting_for_slot",
        "model_call:slot_acquired",
        "model_call:connected",
        "model_call:request_sent",
        "model_call:headers",
        "model_call:first_token",
    ]
    assert progress.labels[:6] == prefix
    assert progress.labels[6:] == ["model_call:streaming"] * 22


async def test_silence_past_the_timeout_is_model_call_error(fake: FakeModel, autojump_clock: Any) -> None:
    start = trio.current_time()
    with pytest.raises(ModelCallError, match="silent for 120s"):
        await openai_model(fake, timeout=120.0).complete(user("/slow 200 a b"), [], Recorder())
    assert trio.current_time() - start == pytest.approx(120)
    assert fake.open_connections.value == 0


@pytest.mark.parametrize("prompt", ["/stall x", "/stall-after 3 a b c d e"])
async def test_cancelling_a_stalled_call_returns_at_once_and_releases_it(
    fake: FakeModel, autojump_clock: Any, prompt: str
) -> None:
    model = openai_model(fake)
    with trio.move_on_after(30) as scope:
        await model.complete(user(prompt), [], Recorder())
    assert scope.cancelled_caught
    assert trio.current_time() == pytest.approx(30)
    assert fake.open_connections.value == 0
    assert fake.closed_at == [pytest.approx(30)]


async def test_build_model_picks_the_adapter(fake: FakeModel) -> None:
    assert isinstance(build_model(ModelConfig(provider="echo"), {}), EchoModel)
    model = build_model(model_config(), {"FAKE_KEY": KEY}, fake.transport())
    assert isinstance(model, OpenAIModel)
    assert (await model.complete(user("via factory"), [], Recorder())).text == "via factory"


# --- the echo model --------------------------------------------------------------------------


async def test_echo_answers_last_user_text_and_records_progress() -> None:
    labels: list[str] = []
    reply = await EchoModel().complete(
        [*user("first"), {"role": "assistant", "content": "x"}, *user("again")], [], labels.append
    )
    assert reply == ModelReply("again")
    assert labels == ["model_call:first_token"]


async def test_echo_spawn_then_reports_the_tool_result() -> None:
    model = EchoModel()
    reply = await model.complete(user("/spawn helper find the bug"), SPAWN_TOOLS, Recorder())
    assert reply.text is None
    (call,) = reply.tool_calls
    assert (call.name, call.arguments) == ("spawn_subagent", {"agent": "helper", "task": "find the bug"})
    history = [*user("/spawn helper find the bug"), reply.as_message()]
    history.append({"role": "tool", "tool_call_id": call.id, "content": "sub-7"})
    assert await model.complete(history, SPAWN_TOOLS, Recorder()) == ModelReply("spawned: sub-7")


async def test_echo_spawn_without_the_tool_offered_is_plain_text() -> None:
    assert await EchoModel().complete(user("/spawn helper x"), [], Recorder()) == ModelReply("/spawn helper x")


async def test_echo_is_cancellable() -> None:
    with trio.CancelScope() as scope:
        scope.cancel()
        await EchoModel().complete(user("hi"), [], Recorder())
        pytest.fail("a cancelled echo call must not return")
    assert scope.cancelled_caught


@pytest.mark.parametrize("event_stream", [True, False])
async def test_a_model_answer_that_never_ends_is_cut_at_the_cap(event_stream: bool) -> None:
    """Issue 25: a model that streams (or sends one body) without end costs the cap, then the
    call fails naming it; nothing past the cap is read."""
    sent: list[int] = []
    chunk = b'data: {"choices": [{"delta": {"content": "' + b"x" * 65000 + b'"}}]}\n\n'

    async def endless() -> Any:
        while True:
            sent.append(len(chunk))
            yield chunk if event_stream else b"x" * len(chunk)

    async def handler(request: http.Request) -> http.Response:
        await trio.lowlevel.checkpoint()
        kind = "text/event-stream" if event_stream else "application/json"
        return http.Response(200, headers={"content-type": kind}, content=endless())

    model = OpenAIModel(model_config(), {"FAKE_KEY": KEY}, http.MockTransport(handler))
    with pytest.raises(ModelCallError, match=f"answer cut: the answer is over {http.MODEL_BODY_BYTES} bytes"):
        await model.complete(user("hi"), [], Recorder())
    assert sum(sent) <= http.MODEL_BODY_BYTES + len(chunk)
