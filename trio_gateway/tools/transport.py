"""Byte pipes to MCP servers, as the `(read, write)` stream pair the SDK's `ClientSession` takes.

Why our own stdio transport and not the SDK's `stdio_client`: the gateway must bound the close
by its own `channelStopTimeoutSeconds` (the SDK waits 2 s after closing stdin, then 2 s more
after SIGTERM), and a misbehaving server must end its connection with a reason a person can
read: a line that is not JSON-RPC, a line over `MAX_MESSAGE_BYTES` (the SDK buffers a line
without limit), or an exit. Any of those closes the read stream, which fails every pending
call with `CONNECTION_CLOSED`, and `Link.failure` says why.

The line protocol runs over any pair of trio streams, so the testing kit's in-process fake
server plugs into the very same code (`pipe_link`) without a subprocess.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import attrs
import trio
import trio_util
from mcp import types
from mcp.shared.message import SessionMessage

from trio_gateway import upstream as http
from trio_gateway.tools.reaper import Reaper

# One JSON-RPC message from a server may not exceed this (a tool reply is cut further, to
# `tools.http.maxResponseBytes`, before the model sees it).
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Messages the SDK may hand over while the writer is stuck on a server that stopped reading
# its input (a full pipe). The SDK waits up to 5 s, shielded, to hand over the
# `notifications/cancelled` of an aborted call: with no room here, every abort (and a drain's
# cut) would take that long. Bounded, so a server that floods requests and reads nothing
# holds back the session's answers instead of growing memory.
WRITE_QUEUE_MESSAGES = 64
# How long a closing connection may take to hand its last messages (a cancellation) to the server.
FLUSH_SECONDS = 0.5
# How long to wait, after a server's output ends, for its exit status (for the error message).
EXIT_GRACE_SECONDS = 0.5
# A server that exits when its stdin closes (most do) is spared the signals.
EOF_GRACE_SECONDS = 0.1
# After SIGKILL the kernel frees a process at once; this only bounds waiting to reap it.
REAP_TIMEOUT_SECONDS = 1.0


CLOSED_OUTPUT = "the server closed its output"


@attrs.define(eq=False)
class Link:
    """One live connection: the SDK's streams, why it ended, and the server's process."""

    read: Any
    write: Any
    dead: trio.Event = attrs.Factory(trio.Event)
    failure: str | None = None
    pid: int | None = None

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self.dead.set()


# Why the server's output ended (a process's exit status, when it has one).
EofReason = Callable[[], Awaitable[str]]
# Opens one connection to one server; the context manager's exit closes it, bounded.
Opener = Callable[[], AbstractAsyncContextManager[Link]]


def _too_long(size: int) -> str:
    return f"the server sent a message over {MAX_MESSAGE_BYTES} bytes ({size} bytes without a line end)"


def _parse_line(line: bytes) -> SessionMessage:
    """One line of the server's stdout as a JSON-RPC message; ValueError naming the problem."""
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError:
        shown = line[:80].decode("utf-8", "replace")
        raise ValueError(f"the server wrote something that is not JSON-RPC: {shown!r}") from None


async def _read_lines(stream: trio.abc.ReceiveStream, link: Link, sink: Any, eof_reason: EofReason) -> None:
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            link.fail(await eof_reason())
            return
        scan = len(buffer)  # what is already in the buffer holds no line end: search only the new bytes
        buffer += chunk
        while (end := buffer.find(b"\n", scan)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            scan = 0
            if len(line) > MAX_MESSAGE_BYTES:
                link.fail(_too_long(len(line)))
                return
            if line.strip():
                try:
                    message = _parse_line(line)
                except ValueError as exc:
                    link.fail(str(exc))
                    return
                await sink.send(message)
        if len(buffer) > MAX_MESSAGE_BYTES:
            link.fail(_too_long(len(buffer)))
            return


async def _write_lines(stream: trio.abc.SendStream, link: Link, source: Any) -> None:
    async for message in source:
        data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
        try:
            await stream.send_all(data.encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            link.fail("the server stopped reading its input")
            return


async def _closed_output() -> str:
    await trio.lowlevel.checkpoint()
    return CLOSED_OUTPUT


@asynccontextmanager
async def pipe_link(
    send: trio.abc.SendStream, receive: trio.abc.ReceiveStream, eof_reason: EofReason = _closed_output
) -> AsyncIterator[Link]:
    """Newline-delimited JSON-RPC over two trio streams, for `ClientSession`. When the link
    dies (EOF, garbage, oversize) the read stream closes, so the SDK fails pending calls."""
    to_session, read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write, from_session = anyio.create_memory_object_stream[SessionMessage](WRITE_QUEUE_MESSAGES)
    link = Link(read, write)
    # The writer outlives a cancellation for a moment: a call cut by a drain deadline hands the
    # SDK's `notifications/cancelled` to it while its scope is cancelled, and the server must
    # still be told. Shielded now; given a deadline the moment the link closes.
    writer_scope = trio.CancelScope(shield=True)

    async def reader() -> None:
        async with to_session:
            await _read_lines(receive, link, to_session, eof_reason)

    async def writer() -> None:
        with writer_scope:
            async with from_session:
                await _write_lines(send, link, from_session)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(writer)
        try:
            yield link
        finally:
            writer_scope.deadline = trio.current_time() + FLUSH_SECONDS
            write.close()  # the writer sends what it holds, then sees the end
            nursery.cancel_scope.cancel(reason="MCP connection closed")  # the reader
            for stream in (read, to_session):
                stream.close()


def stdio_opener(
    command: list[str],
    env: Mapping[str, str],
    stop_timeout: float,
    stderr_path: str | None,
    reaper: Reaper | None = None,
) -> Opener:
    """A stdio server in its own process group (so SIGTERM reaches whatever it forks), with
    `env` as its whole environment. With a `reaper`, what escaped the group (`setsid`) is
    killed after the stop too."""

    @asynccontextmanager
    async def open_stdio() -> AsyncIterator[Link]:
        # A local append-only log file: opening it costs microseconds, not worth a thread.
        err = open(stderr_path, "ab") if stderr_path else subprocess.DEVNULL  # noqa: SIM115, ASYNC230
        try:
            with reaper.starting() if reaper is not None else contextlib.nullcontext():
                process = await trio.lowlevel.open_process(
                    command,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    env=dict(env),  # exactly what the caller chose: never the gateway's whole environment
                    start_new_session=True,
                )
                if reaper is not None:
                    reaper.live.add(process.pid)
        finally:
            if not isinstance(err, int):
                err.close()

        async def exit_reason() -> str:
            # A crashed server closes its output as it exits: wait a moment to say how it ended.
            with trio.move_on_after(EXIT_GRACE_SECONDS):
                await process.wait()
            return CLOSED_OUTPUT if process.returncode is None else f"the server {describe_exit(process.returncode)}"

        try:
            assert process.stdin is not None
            assert process.stdout is not None
            async with pipe_link(process.stdin, process.stdout, exit_reason) as link:
                link.pid = process.pid
                yield link
        finally:
            with trio.move_on_after(EOF_GRACE_SECONDS + stop_timeout + REAP_TIMEOUT_SECONDS, shield=True):
                await _stop_process(process, stop_timeout)
            release(process)
            if reaper is not None:
                reaper.live.discard(process.pid)
                with trio.move_on_after(REAP_TIMEOUT_SECONDS, shield=True):
                    await reaper.kill_orphans()

    return open_stdio


def release(process: trio.Process) -> None:
    """Whatever the bounded stop got done: its pipes closed, and a process not reaped yet (slow
    to die after SIGKILL, or the deadline came first) killed with its group and reaped by a
    thread, never a zombie for the gateway's lifetime. Nothing here waits."""
    for pipe in (process.stdin, process.stdout):
        if isinstance(pipe, trio.lowlevel.FdStream):
            pipe.close()
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGKILL)
        trio.lowlevel.start_thread_soon(functools.partial(_reap, process.pid), lambda _outcome: None)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reaped already
        os.waitpid(pid, 0)


async def _stop_process(process: trio.Process, stop_timeout: float) -> None:
    """Close its stdin and give it `EOF_GRACE_SECONDS` to exit (the MCP stdio shutdown; it also
    lets a server read the `notifications/cancelled` just written), then SIGTERM to the process
    group, SIGKILL after `stop_timeout`, then reap: no orphan (the group goes too), no zombie
    (we wait). Called under the caller's shielded deadline."""
    if process.stdin is not None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await process.stdin.aclose()
    with trio.move_on_after(min(EOF_GRACE_SECONDS, stop_timeout)):
        await process.wait()
    if process.returncode is None:
        _signal_group(process.pid, signal.SIGTERM)
        with trio.move_on_after(stop_timeout):
            await process.wait()
    # Whatever the leader did, its group may still hold children: they go with it.
    _signal_group(process.pid, signal.SIGKILL)
    await process.wait()
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            await pipe.aclose()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(pgid, sig)


def describe_exit(process_returncode: int | None) -> str:
    if process_returncode is None:
        return "running"
    if process_returncode < 0:
        return f"killed by signal {-process_returncode}"
    return f"exited with code {process_returncode}"


# The HTTP client's own timeouts for an MCP server: connecting, writing, waiting for a pooled
# connection. No read timeout: a tool may be silent as long as the stall watchdog allows (its
# recovery, not the transport, decides), and the SDK's event stream is idle between events.
MCP_HTTP_TIMEOUT = http.Timeout(30.0, read=None)
_CANCELLED = "notifications/cancelled"


@attrs.define(eq=False)
class _HttpSession:
    """What the gateway must know of the SDK's HTTP session to end it itself: its headers (the
    session id and protocol version the SDK sends) and the `notifications/cancelled` POSTs not
    answered yet. Fed by the client's event hooks: the SDK keeps both to itself."""

    headers: dict[str, str] = attrs.Factory(dict)
    cancels_in_flight: trio_util.AsyncValue[int] = attrs.Factory(lambda: trio_util.AsyncValue(0))

    async def on_request(self, request: http.Request) -> None:
        if "mcp-session-id" in request.headers:
            names = ("mcp-session-id", "mcp-protocol-version")
            self.headers = {k: request.headers[k] for k in names if k in request.headers}
        if _is_cancel(request):
            self.cancels_in_flight.value += 1

    async def on_response(self, response: http.Response) -> None:
        if _is_cancel(response.request):
            self.cancels_in_flight.value -= 1

    async def flush(self, seconds: float) -> None:
        """Until every cancellation handed to the SDK is posted (at most `seconds`): the SDK
        posts them one after the other, and closing its transport cuts the one in flight, so
        the server would keep running a call the gateway gave up on."""
        with trio.move_on_after(seconds):
            await trio.sleep(0.01)  # the SDK's writer takes the last one and starts its POST
            await self.cancels_in_flight.wait_value(0)

    async def end(self, client: Any, url: str) -> None:
        """`DELETE` with the session id (MCP streamable HTTP: the client ends its session), so
        the server drops whatever it still runs for us. A server may refuse (405): fine."""
        if "mcp-session-id" not in self.headers:
            return
        with contextlib.suppress(http.HTTPError):
            await client.delete(url, headers=self.headers)


def _is_cancel(request: http.Request) -> bool:
    if request.method != "POST" or _CANCELLED.encode() not in request.content:
        return False
    with contextlib.suppress(ValueError):
        return bool(json.loads(request.content).get("method") == _CANCELLED)
    return False


def http_opener(
    url: str, headers: Mapping[str, str], client_factory: Callable[[], Any], stop_timeout: float = 5.0
) -> Opener:
    """A streamable HTTP server through the SDK's transport and our httpx2 client.

    The SDK's transport runs in its own task, shielded until the link closes and then given a
    deadline (as `pipe_link`'s writer): a drain cancels the calls first, and the SDK posts
    their `notifications/cancelled` one after the other; cancelled with the connection, it
    would cut the one in flight, and the server would keep running a call the gateway gave up
    on. So the close posts what is pending, then ends the session (`DELETE` with its id: the
    SDK's own would be cancelled before it is sent), within `FLUSH_SECONDS + stop_timeout`."""

    @asynccontextmanager
    async def open_http() -> AsyncIterator[Link]:
        session = _HttpSession()
        closing = trio.Event()
        shield = trio.CancelScope(shield=True)
        async with client_factory() as client:
            client.headers.update(headers)
            client.event_hooks["request"].append(session.on_request)
            client.event_hooks["response"].append(session.on_response)
            run = functools.partial(_run_http_transport, url, client, session, shield, closing)
            async with trio.open_nursery() as nursery:
                read, write = await nursery.start(run)
                try:
                    yield Link(read, write)
                finally:
                    shield.deadline = trio.current_time() + FLUSH_SECONDS + stop_timeout
                    closing.set()

    return open_http


async def _run_http_transport(
    url: str,
    client: Any,
    session: _HttpSession,
    shield: trio.CancelScope,
    closing: trio.Event,
    *,
    task_status: trio.TaskStatus[tuple[Any, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    from mcp.client.streamable_http import streamable_http_client

    with shield:
        async with streamable_http_client(url, http_client=client, terminate_on_close=False) as streams:
            task_status.started(streams)
            await closing.wait()
            await session.flush(FLUSH_SECONDS)
        await session.end(client, url)
