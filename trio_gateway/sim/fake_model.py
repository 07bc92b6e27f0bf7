"""The fake model server: echo, delayed, stalled, failing, slow, tool calls, keep-alives only,
overloaded, an error mid-stream. It speaks one provider's protocol, its `Wire`: OpenAI's chat
completions here (`OPENAI`), Anthropic's Messages API in `fake_anthropic.py`; the behaviour
core below is the same for both.

Why a raw trio + h11 server and not an ASGI app under hypercorn: the point of this fake is to
observe the transport. A test must see the exact moment the client's socket closes (EOF), count
open connections, and stall before the status line with nothing in between buffering or
answering for us; hypercorn neither cancels a handler on disconnect nor exposes per-connection
state, and adds its own shutdown deadlines. h11 is already installed (httpx depends on it).

The same behaviour core serves two ways:
- in-process, no sockets: `fake.transport()` is an `AsyncBaseTransport` for `OpenAIModel`; every
  wait is a trio sleep, so it runs on MockClock (`autojump_clock`). It honours the request's read
  timeout like a real transport (raises `ReadTimeout`), so inactivity timeouts are testable too;
- on loopback: `await nursery.start(serve_fake_model, fake)` returns the base URL, and
  `python -m trio_gateway.sim.fake_model --port 0 --mode stall` prints its URL as the first
  line of stdout.

Behaviour is set per server by `fake.behaviour` (a mutable `FakeBehaviour`; switch it at run
time) and may be overridden per request by a directive at the start of the last user message.
The directive is stripped and the rest is answered by the echo rule (`models/echo.py`):

    /stall            never send headers
    /stall-after K    send K chunks (streaming) or headers only (non-streaming), then stall
    /delay N          wait N seconds, then answer
    /slow N           one streamed chunk every N seconds
    /fail S           answer with HTTP status S
    /overloaded       the provider's overload answer (529 Anthropic, 503 OpenAI) with retry-after
    /pings            headers, then keep-alives only (`ping` events, `: keep-alive` comments)
    /error-after K    stream K events, then the provider's mid-stream error event
    /spawn A TASK     (not a directive: the echo rule) a `spawn_subagent` tool call
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Literal, Protocol

import attrs
import h11
import trio
from trio_util import AsyncValue

from trio_gateway import upstream as http
from trio_gateway.models.base import Message, ModelReply
from trio_gateway.models.echo import estimate_usage, last_user_text, scripted_reply

Mode = Literal["echo", "delay", "stall", "stall_mid_stream", "fail", "slow", "pings", "overloaded", "error_mid_stream"]
_MODES: tuple[Mode, ...] = (
    "echo",
    "delay",
    "stall",
    "stall_mid_stream",
    "fail",
    "slow",
    "pings",
    "overloaded",
    "error_mid_stream",
)


@attrs.define
class FakeBehaviour:
    """What the server does with a request that carries no directive."""

    mode: Mode = "echo"
    delay_seconds: float = 0.0  # mode "delay": wait before the status line
    stall_after_chunks: int = 1  # mode "stall_mid_stream"
    status: int = 500  # mode "fail"
    chunk_interval_seconds: float = 0.0  # mode "slow" (also applies to any streamed answer)
    retry_after_seconds: float | None = 1.0  # mode "overloaded": the retry-after header
    ping_interval_seconds: float = 1.0  # mode "pings": one keep-alive this often
    error_after_chunks: int = 1  # mode "error_mid_stream"


@attrs.frozen
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@attrs.frozen
class Plan:
    """One request's answer, decided before anything is sent."""

    before_headers: float = 0.0  # math.inf: stall forever before the status line
    status: int = 200
    chunk_interval: float = 0.0
    stall_after_chunks: int | None = None
    text: str = ""
    # Keep-alives forever after the headers, one every `pings` seconds (None: none).
    pings: float | None = None
    # Send this many events, then the provider's mid-stream error event (None: no error).
    error_after: int | None = None
    retry_after: float | None = None
    overloaded: bool = False


def _plan_for(messages: list[Message], behaviour: FakeBehaviour) -> tuple[Plan, list[Message]]:
    """Decide the answer from the server behaviour and an optional directive in the prompt."""
    text = last_user_text(messages)
    directive, rest = _split_directive(text)
    if directive is not None:
        messages = _replace_last_user_text(messages, rest)
    plan = _directive_plan(directive) if directive else _behaviour_plan(behaviour)
    return plan, messages


def _split_directive(text: str) -> tuple[tuple[str, float] | None, str]:
    parts = text.strip().split(maxsplit=1)
    if not parts or parts[0] not in _DIRECTIVES:
        return None, text
    name, rest = parts[0], parts[1] if len(parts) > 1 else ""
    if name in _NO_ARGUMENT:
        return (name, 0.0), rest
    arg, _, rest = rest.partition(" ")
    try:
        return (name, float(arg)), rest
    except ValueError:
        return None, text


_DIRECTIVES = ("/stall", "/stall-after", "/delay", "/slow", "/fail", "/overloaded", "/pings", "/error-after")
_NO_ARGUMENT = ("/stall", "/overloaded", "/pings")


def _directive_plan(directive: tuple[str, float]) -> Plan:
    name, arg = directive
    return {
        "/overloaded": lambda: Plan(overloaded=True, retry_after=1.0),
        "/pings": lambda: Plan(pings=1.0),
        "/error-after": lambda: Plan(error_after=int(arg)),
        "/stall": lambda: Plan(before_headers=math.inf),
        "/stall-after": lambda: Plan(stall_after_chunks=int(arg)),
        "/delay": lambda: Plan(before_headers=arg),
        "/slow": lambda: Plan(chunk_interval=arg),
        "/fail": lambda: Plan(status=int(arg)),
    }[name]()


def _behaviour_plan(b: FakeBehaviour) -> Plan:
    interval = b.chunk_interval_seconds
    if b.mode == "stall":
        return Plan(before_headers=math.inf)
    if b.mode == "delay":
        return Plan(before_headers=b.delay_seconds, chunk_interval=interval)
    if b.mode == "stall_mid_stream":
        return Plan(stall_after_chunks=b.stall_after_chunks, chunk_interval=interval)
    if b.mode == "fail":
        return Plan(status=b.status)
    if b.mode == "overloaded":
        return Plan(overloaded=True, retry_after=b.retry_after_seconds)
    if b.mode == "pings":
        return Plan(pings=b.ping_interval_seconds)
    if b.mode == "error_mid_stream":
        return Plan(error_after=b.error_after_chunks, chunk_interval=interval)
    return Plan(chunk_interval=interval)


def _replace_last_user_text(messages: list[Message], text: str) -> list[Message]:
    out = list(messages)
    for i in range(len(out) - 1, -1, -1):
        if out[i].get("role") == "user":
            out[i] = {**out[i], "content": text}
            break
    return out


# --- a provider's protocol ----------------------------------------------------------------------


class Wire(Protocol):
    """What the fake says in one provider's protocol; the behaviour core decides when."""

    # The path suffix it answers (`/chat/completions`, `/v1/messages`).
    path: str
    # Its overload answer's status (HTTP 529 at Anthropic).
    overloaded_status: int

    def conversation(self, body: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
        """The request as the session's (OpenAI-shaped) messages and tools, for the echo rule."""
        ...

    def completion(self, reply: ModelReply, model: str) -> bytes: ...

    def stream(self, reply: ModelReply, model: str) -> list[bytes]: ...

    def error(self, status: int) -> bytes: ...

    def keep_alive(self) -> bytes: ...

    def stream_error(self) -> bytes: ...


def sse(obj: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj).encode() + b"\n\n"


def words(text: str) -> list[str]:
    # Split after each space, keeping it, so the chunks concatenate back to the exact text.
    return [w for w in re.split(r"(?<= )", text) if w]


def fragments(text: str, size: int = 7) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class OpenAIWire:
    """OpenAI's chat completions, streamed as `data:` chunks ending in `[DONE]`."""

    path = "/chat/completions"
    overloaded_status = 503

    def conversation(self, body: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
        return list(body.get("messages") or []), list(body.get("tools") or [])

    def completion(self, reply: ModelReply, model: str) -> bytes:
        message: dict[str, Any] = reply.as_message()
        finish = "tool_calls" if reply.tool_calls else "stop"
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": _openai_usage(reply),
        }
        return json.dumps(body).encode()

    def stream(self, reply: ModelReply, model: str) -> list[bytes]:
        """Content one word per chunk, tool-call arguments in fragments, usage, then [DONE]."""
        deltas: list[dict[str, Any]] = [{"role": "assistant"}]
        if reply.text:
            deltas += [{"content": word} for word in words(reply.text)]
        for index, call in enumerate(reply.tool_calls):
            arguments = json.dumps(call.arguments)
            head = {"index": index, "id": call.id, "type": "function", "function": {"name": call.name, "arguments": ""}}
            deltas.append({"tool_calls": [head]})
            deltas += [{"tool_calls": [{"index": index, "function": {"arguments": f}}]} for f in fragments(arguments)]
        finish = "tool_calls" if reply.tool_calls else "stop"
        events = [sse({"id": "chatcmpl-fake", "model": model, "choices": [{"index": 0, "delta": d}]}) for d in deltas]
        events.append(sse({"id": "chatcmpl-fake", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        events.append(sse({"id": "chatcmpl-fake", "choices": [], "usage": _openai_usage(reply)}))
        events.append(b"data: [DONE]\n\n")
        return events

    def error(self, status: int) -> bytes:
        return json.dumps({"error": {"message": f"fake model failure {status}", "type": "fake_error"}}).encode()

    def keep_alive(self) -> bytes:
        return b": keep-alive\n\n"

    def stream_error(self) -> bytes:
        return sse({"error": {"message": "fake model failure mid-stream", "type": "server_error"}})


def _openai_usage(reply: ModelReply) -> dict[str, int]:
    usage = reply.usage
    return {"prompt_tokens": usage.input, "completion_tokens": usage.output, "total_tokens": usage.total}


OPENAI = OpenAIWire()


# --- the server state and its two faces ------------------------------------------------------


@attrs.frozen
class _Head:
    status: int
    headers: list[tuple[str, str]]


@attrs.define(eq=False)
class FakeModel:
    """One fake upstream. Mutate `behaviour` at run time; read the records in assertions."""

    behaviour: FakeBehaviour = attrs.Factory(FakeBehaviour)
    wire: Wire = OPENAI
    requests: list[RecordedRequest] = attrs.Factory(list)
    # Connections (loopback) or in-flight exchanges (in-process) not yet closed by the client;
    # an AsyncValue so a test can `await fake.open_connections.wait_value(0)`.
    open_connections: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    # Requests received so far, as an AsyncValue so a test can wait until N have arrived.
    received: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))
    connections_opened: int = 0
    # trio.current_time() at each close the server saw (client EOF, reset or aclose).
    closed_at: list[float] = attrs.Factory(list)
    _calls: int = 0

    def transport(self) -> FakeModelTransport:
        return FakeModelTransport(self)

    def record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[Plan, list[bytes]]:
        """Record the request and decide the answer: the plan and the body pieces."""
        body = _parse_json(raw)
        self.requests.append(RecordedRequest(method, path, headers, body))
        self.received.value += 1
        wire = self.wire
        if not path.rstrip("/").endswith(wire.path) or method != "POST":
            return Plan(status=404), [wire.error(404)]
        messages, tools = wire.conversation(body)
        plan, messages = _plan_for(messages, self.behaviour)
        streaming = bool(body.get("stream"))
        if not streaming and (plan.stall_after_chunks is not None or plan.pings is not None):
            # One JSON body cannot be cut into chunks a client would act on: stall after headers.
            plan = attrs.evolve(plan, stall_after_chunks=0, pings=None)
        if plan.overloaded:
            plan = attrs.evolve(plan, status=wire.overloaded_status)
        if plan.status >= 400:
            return plan, [wire.error(plan.status)]
        if plan.pings is not None:
            return plan, [wire.keep_alive()]
        self._calls += 1
        reply = scripted_reply(messages, tools, f"call_fake_{self._calls}")
        reply = attrs.evolve(reply, usage=estimate_usage(messages, reply))
        model = str(body.get("model") or "fake")
        if not streaming:
            return plan, [wire.completion(reply, model)]
        pieces = wire.stream(reply, model)
        if plan.error_after is not None:
            pieces = [*pieces[: plan.error_after], wire.stream_error()]
        return plan, pieces

    def opened(self) -> None:
        self.connections_opened += 1
        self.open_connections.value += 1

    def closed(self) -> None:
        self.open_connections.value -= 1
        self.closed_at.append(trio.current_time())


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _head_for(plan: Plan, streaming: bool, body_length: int | None) -> _Head:
    kind = "text/event-stream" if streaming and plan.status < 400 else "application/json"
    headers = [("content-type", kind)]
    if body_length is not None:
        headers.append(("content-length", str(body_length)))
    if plan.status >= 400 and plan.retry_after is not None:
        headers.append(("retry-after", f"{plan.retry_after:g}"))
    return _Head(plan.status, headers)


async def _body_pieces(plan: Plan, pieces: list[bytes], wait: Callable[[float], Any]) -> AsyncIterator[bytes]:
    """Yield the body on the plan's schedule; `wait(seconds)` is the (possibly timed) sleep."""
    if plan.pings is not None:
        while True:  # keep-alives only, until the client hangs up
            yield pieces[0]
            await wait(plan.pings)
    for sent, piece in enumerate(pieces):
        if plan.stall_after_chunks is not None and sent >= plan.stall_after_chunks:
            await wait(math.inf)
        if sent and plan.chunk_interval:
            await wait(plan.chunk_interval)
        yield piece
    if plan.stall_after_chunks is not None and plan.stall_after_chunks >= len(pieces):
        await wait(math.inf)


# --- in-process: an httpx transport, no sockets ------------------------------------------------


class FakeModelTransport(http.AsyncBaseTransport):
    """Answers like the loopback server, in-process; one 'connection' per exchange."""

    def __init__(self, fake: FakeModel) -> None:
        self._fake = fake

    async def handle_async_request(self, request: http.Request) -> http.Response:
        raw = await request.aread()
        await _trace(request, "connect_tcp.complete")
        await _trace(request, "http11.send_request_body.complete")
        headers = {k.decode().lower(): v.decode() for k, v in request.headers.raw}
        plan, pieces = self._fake.record(request.method, request.url.path, headers, raw)
        read_timeout = _read_timeout(request)
        self._fake.opened()
        try:
            await _timed_sleep(plan.before_headers, read_timeout, request)
        except BaseException:
            self._fake.closed()
            raise
        streaming = bool(_parse_json(raw).get("stream"))
        length = None if streaming and plan.status < 400 else sum(map(len, pieces))
        head = _head_for(plan, streaming, length)
        wait = partial(_timed_sleep, read_timeout=read_timeout, request=request)
        stream = _InProcessStream(_body_pieces(plan, pieces, wait), self._fake)
        return http.Response(head.status, headers=head.headers, stream=stream, request=request)


async def _trace(request: http.Request, event: str) -> None:
    """Fire the request's trace hook like a real transport does, so progress labels match."""
    hook = request.extensions.get("trace")
    if hook is not None:
        await hook(event, {})


def _read_timeout(request: http.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    value = timeout.get("read")
    return float(value) if value is not None else None


async def _timed_sleep(seconds: float, read_timeout: float | None, request: http.Request) -> None:
    """Sleep as an upstream that sends nothing for `seconds`; a read timeout fires first."""
    if read_timeout is None or seconds <= read_timeout:
        await trio.sleep(seconds)
        return
    await trio.sleep(read_timeout)
    raise http.ReadTimeout("fake upstream sent nothing within the read timeout", request=request)


class _InProcessStream(http.AsyncByteStream):
    def __init__(self, pieces: AsyncIterator[bytes], fake: FakeModel) -> None:
        self._pieces = pieces
        self._fake = fake
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces:
            yield piece

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._fake.closed()
        await trio.lowlevel.checkpoint_if_cancelled()


# --- on loopback: a raw trio + h11 server ------------------------------------------------------


async def serve_fake_model(
    fake: FakeModel,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `fake` until cancelled; `await nursery.start(serve_fake_model, fake)` -> base URL."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, partial(_serve_connection, fake), port, host=host))
        bound_port = listeners[0].socket.getsockname()[1]
        task_status.started(f"http://{host}:{bound_port}/v1")


async def _serve_connection(fake: FakeModel, stream: trio.SocketStream) -> None:
    fake.opened()
    conn = h11.Connection(h11.SERVER)
    try:
        while await _serve_one(fake, stream, conn):
            conn.start_next_cycle()
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        fake.closed()
        with trio.move_on_after(1.0, shield=True):  # closing a socket is instant; bounded anyway
            await trio.aclose_forcefully(stream)


async def _serve_one(fake: FakeModel, stream: trio.SocketStream, conn: h11.Connection) -> bool:
    """One request/response; False when the connection is done."""
    request, raw = await _read_request(stream, conn)
    if request is None:
        return False
    headers = {k.decode().lower(): v.decode() for k, v in request.headers}
    plan, pieces = fake.record(request.method.decode(), request.target.decode().split("?")[0], headers, raw)
    gone = trio.Event()
    async with trio.open_nursery() as nursery:
        # The client may hang up while we stall: watching for EOF is how the fake sees an abort.
        nursery.start_soon(_watch_for_eof, stream, conn, gone, nursery.cancel_scope)
        await _send_response(stream, conn, plan, pieces, bool(_parse_json(raw).get("stream")), gone)
        nursery.cancel_scope.cancel()
    if gone.is_set():
        return False
    if conn.their_state is h11.ERROR or conn.our_state is h11.MUST_CLOSE:
        return False
    return conn.our_state is h11.DONE and conn.their_state is h11.DONE


async def _read_request(stream: trio.SocketStream, conn: h11.Connection) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return request, body
        else:  # ConnectionClosed or PAUSED
            return None, b""


async def _watch_for_eof(
    stream: trio.SocketStream, conn: h11.Connection, gone: trio.Event, scope: trio.CancelScope
) -> None:
    try:
        data = await stream.receive_some(65536)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        data = b""
    if data:
        conn.receive_data(data)  # a pipelined next request: keep it for the next cycle
        await trio.sleep_forever()
    gone.set()
    scope.cancel()


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, plan: Plan, pieces: list[bytes], streaming: bool, gone: trio.Event
) -> None:
    try:
        await _send_planned(stream, conn, plan, pieces, streaming)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        gone.set()


async def _send_planned(
    stream: trio.SocketStream, conn: h11.Connection, plan: Plan, pieces: list[bytes], streaming: bool
) -> None:
    await trio.sleep(plan.before_headers)
    length = None if streaming and plan.status < 400 else sum(map(len, pieces))
    head = _head_for(plan, streaming, length)
    await stream.send_all(conn.send(h11.Response(status_code=head.status, headers=head.headers)) or b"")
    async for piece in _body_pieces(plan, pieces, trio.sleep):
        await stream.send_all(conn.send(h11.Data(data=piece)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")


# --- as a separate process -------------------------------------------------------------------


def _parse_args(argv: list[str], prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", choices=_MODES, default="echo")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before headers (mode delay)")
    parser.add_argument("--stall-after", type=int, default=1, help="chunks before stalling (mode stall_mid_stream)")
    parser.add_argument("--status", type=int, default=500, help="HTTP status (mode fail)")
    parser.add_argument("--chunk-interval", type=float, default=0.0, help="seconds between chunks (mode slow)")
    parser.add_argument("--retry-after", type=float, default=1.0, help="retry-after seconds (mode overloaded)")
    parser.add_argument("--ping-interval", type=float, default=1.0, help="seconds between keep-alives (mode pings)")
    parser.add_argument("--error-after", type=int, default=1, help="events before the error (mode error_mid_stream)")
    return parser.parse_args(argv)


async def _main(args: argparse.Namespace, wire: Wire) -> None:
    behaviour = FakeBehaviour(
        args.mode,
        args.delay,
        args.stall_after,
        args.status,
        args.chunk_interval,
        args.retry_after,
        args.ping_interval,
        args.error_after,
    )
    async with trio.open_nursery() as nursery:
        fake = FakeModel(behaviour, wire)
        url = await nursery.start(partial(serve_fake_model, fake, host=args.host, port=args.port))
        print(url, flush=True)


def main(
    argv: list[str] | None = None, wire: Wire = OPENAI, prog: str = "python -m trio_gateway.sim.fake_model"
) -> None:
    trio.run(_main, _parse_args(sys.argv[1:] if argv is None else argv, prog), wire)


if __name__ == "__main__":
    main()
