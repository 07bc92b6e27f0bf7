"""Agents' tools (SPEC 14) on trio's MockClock, against the in-process fake MCP server: each
call a unit that answers, is aborted when silent (and the server told), survives progress,
and fails with a clear tool error when its server crashes or misbehaves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_gateway import upstream as http
from trio_gateway.errors import ConfigError
from trio_gateway.http import views
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy import config as cfg
from trio_gateway.policy import config_keys
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_mcp import FakeMcpServers, in_process_tools
from trio_gateway.sim.runtime import Notice, build_gateway

CONSOLE = Origin("console", "ops", None)


def tools_config(**overrides: Any) -> cfg.Config:
    raw: dict[str, Any] = {
        "gateway": {"stalledTaskDetection": {"thresholdSeconds": 10, "checkIntervalSeconds": 1}},
        "tools": {"mcpServers": {"files": {"command": ["fake"]}, "other": {"command": ["fake"]}}},
        "agents": {"main": {"tools": ["files.*"]}},
    }
    for key, value in overrides.items():
        raw, _ = config_keys.set_key(raw, key, value)
    return cfg.parse(raw)


async def until(ready: Callable[[], bool]) -> None:
    """Poll on the virtual clock (costs no wall time) until `ready()`."""
    while not ready():  # noqa: ASYNC110 (state of several objects, no single event to wait on)
        await trio.sleep(0.01)


async def run_gateway(
    nursery: trio.Nursery, tmp_path: Path, config: cfg.Config
) -> tuple[Gateway, MemorySink, FakeMcpServers, list[Notice]]:
    fakes = FakeMcpServers()
    notices: list[Notice] = []
    gateway, sink = build_gateway(tmp_path, config, notices=notices, tools_factory=in_process_tools(fakes))
    # A model that follows `/tool` directives (the harness's ScriptedModel).
    await nursery.start(gateway.serve)
    assert gateway.tools is not None
    tools = gateway.tools
    await until(lambda: all(s.state == "running" for s in tools.servers.values()))
    return gateway, sink, fakes, notices


async def ask(gateway: Gateway, notices: list[Notice], prompt: str) -> Notice:
    before = len(notices)
    await gateway.submit(agent_id="main", origin=CONSOLE, prompt=prompt)
    await until(lambda: len(notices) != before)
    return notices[-1]


async def test_the_model_calls_an_mcp_tool_and_answers_with_its_result(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, _sink, fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        reply = await ask(gateway, notices, '/tool files__echo {"text": "hello from MCP"}')
        assert reply.text == "tool files__echo: hello from MCP"
        assert fakes["files"].calls == ["echo"]
        gateway.request_drain("stop", force=True)


async def test_only_allowed_tools_are_offered_and_callable(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    config = tools_config(**{"agents.main.tools": ["files.echo"]})
    async with trio.open_nursery() as nursery:
        gateway, _sink, fakes, notices = await run_gateway(nursery, tmp_path, config)
        assert gateway.tools is not None
        names = [t["function"]["name"] for t in gateway.tools.offered("main")]
        assert names == ["files__echo"]
        # Not offered, so the scripted model does not ask for it: the prompt is echoed.
        reply = await ask(gateway, notices, "/tool other__echo {}")
        assert reply.text.startswith("echo: /tool other__echo")
        assert fakes["other"].calls == []
        gateway.request_drain("stop", force=True)


async def test_a_silent_tool_is_aborted_at_the_threshold_and_the_turn_goes_on(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, sink, fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        started = trio.current_time()
        reply = await ask(gateway, notices, "/tool files__hang {}")
        took = reply.at - started
        assert reply.text.startswith("tool files__hang: ")
        error = json.loads(reply.text.removeprefix("tool files__hang: "))["error"]
        assert "aborted" in error
        assert 10 <= took <= 11 + 0.1  # threshold, plus at most one check interval
        await until(lambda: bool(fakes["files"].cancelled))  # notifications/cancelled reached the server
        assert len(fakes["files"].cancelled) == 1
        assert any(e.tag == "AUTO-ABORT" for e in sink.events)
        assert gateway.tools is not None
        assert gateway.tools.outcomes[("mcp", "aborted")] == 1
        gateway.request_drain("stop", force=True)


async def test_a_tool_that_reports_progress_is_never_aborted(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, _sink, _fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        started = trio.current_time()
        reply = await ask(gateway, notices, '/tool files__slow {"seconds": 60, "every": 5}')
        assert reply.text == "tool files__slow: slow done"
        assert reply.at - started >= 60
        gateway.request_drain("stop", force=True)


async def test_progress_then_silence_is_aborted_a_threshold_after_the_last_progress(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, _sink, _fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        started = trio.current_time()
        reply = await ask(gateway, notices, '/tool files__progress_then_silent {"count": 4, "every": 5}')
        assert "aborted" in reply.text
        assert 30 <= reply.at - started <= 31 + 0.1  # last progress at 20 s, threshold 10 s
        gateway.request_drain("stop", force=True)


@pytest.mark.parametrize(
    ("tool", "args", "says"),
    [
        ("crash", {}, "the server closed its output"),
        ("garbage", {}, "not JSON-RPC: 'this is not JSON-RPC'"),
        ("flood", {"bytes": 5 * 1024 * 1024}, "over 4194304 bytes"),
    ],
)
async def test_a_misbehaving_server_fails_the_call_and_comes_back(
    tmp_path: Path, autojump_clock: trio.abc.Clock, tool: str, args: dict[str, Any], says: str
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, sink, fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        reply = await ask(gateway, notices, f"/tool files__{tool} {json.dumps(args)}")
        error = json.loads(reply.text.removeprefix(f"tool files__{tool}: "))["error"]
        assert says in error, error
        assert "MCP server 'files'" in error
        assert gateway.tools is not None
        server = gateway.tools.servers["files"]
        await until(lambda: server.state == "running")  # restarted with backoff
        assert server.restarts == 1
        assert fakes["files"].connections == 2
        again = await ask(gateway, notices, '/tool files__echo {"text": "back"}')
        assert again.text == "tool files__echo: back"
        assert any(e.message == "MCP server down; restarting" for e in sink.events)
        gateway.request_drain("stop", force=True)


async def test_a_drain_deadline_cuts_a_hanging_tool_and_stops_its_server(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    config = tools_config(**{"gateway.stalledTaskDetection.enabled": False, "gateway.drain.timeoutSeconds": 5})
    async with trio.open_nursery() as nursery:
        gateway, _sink, fakes, _notices = await run_gateway(nursery, tmp_path, config)
        await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/tool files__hang {}")
        await until(lambda: bool(fakes["files"].calls))
        request = gateway.request_drain("restart")
        await request.done.wait()
        report = request.report
        assert report is not None
        assert report.timed_out
        assert report.aborted_work == ("tool_call session=s-1-1",)
        assert report.waited_seconds == pytest.approx(5.0, abs=0.01)
        assert len(fakes["files"].cancelled) == 1  # the server was told
        assert gateway.tools is not None
        files = gateway.tools.servers["files"]
        await until(lambda: files.state == "running")  # generation 2's connection
        assert fakes["files"].connections == 2
        # /metrics counts across generations: the cut call is still there in generation 2.
        assert gateway.tools.outcomes[("mcp", "cancelled")] == 1
        gateway.request_drain("stop", force=True)


def test_tools_config_is_strict() -> None:
    def bad(raw: dict[str, Any]) -> str:
        with pytest.raises(ConfigError) as info:
            cfg.parse(raw)
        return str(info.value)

    assert "exactly one of command" in bad({"tools": {"mcpServers": {"a": {}}}})
    assert "exactly one of command" in bad({"tools": {"mcpServers": {"a": {"command": ["x"], "url": "http://h"}}}})
    assert "tools.mcpServers.a__b" in bad({"tools": {"mcpServers": {"a__b": {"command": ["x"]}}}})
    assert "headersEnv.Authorization" in bad(
        {"tools": {"mcpServers": {"s": {"url": "http://h/mcp", "headersEnv": {"Authorization": "Bearer x"}}}}}
    )
    assert "agents.main.tools[0]" in bad({"agents": {"main": {"tools": ["nope.*"]}}})
    assert "unknown key(s): secret" in bad({"tools": {"http": {"secret": 1}}})
    ok = cfg.parse(
        {
            "tools": {
                "mcpServers": {"files": {"command": ["npx", "srv"], "env": {"ROOT": "/srv"}}},
                "http": {"allowHosts": ["api.example.com"]},
            },
            "agents": {"main": {"tools": ["files.*", "http_request"]}},
        }
    )
    assert ok.tools.mcp_servers["files"].env == {"ROOT": "/srv"}


async def test_status_and_metrics_show_servers_and_call_outcomes(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    from trio_gateway.cli.gateway import status_lines
    from trio_gateway.http.metrics import render

    async with trio.open_nursery() as nursery:
        gateway, _sink, _fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        await ask(gateway, notices, '/tool files__echo {"text": "x"}')
        await ask(gateway, notices, "/tool files__hang {}")
        status = views.status(gateway)
        [files, other] = status["tools"]["mcpServers"]
        assert (files["name"], files["state"], other["name"]) == ("files", "running", "other")
        assert "hang" in files["tools"]
        lines = status_lines(status, 1, "http://x")
        assert any(line.startswith("  files") and "running" in line and "echo, hang" in line for line in lines)
        text = render(gateway)
        assert 'trio_gateway_tool_calls_total{kind="mcp",outcome="ok"} 1' in text
        assert 'trio_gateway_tool_calls_total{kind="mcp",outcome="aborted"} 1' in text
        assert 'trio_gateway_mcp_server_up{server="files"} 1' in text
        gateway.request_drain("stop", force=True)


# --- http_request --------------------------------------------------------------------------------


def http_config(**overrides: Any) -> cfg.Config:
    return tools_config(
        **{
            "tools.http": {"allowHosts": ["api.example.com"], "maxResponseBytes": 10},
            "agents.main.tools": ["http_request"],
            **overrides,
        }
    )


async def run_with_http(
    nursery: trio.Nursery, tmp_path: Path, config: cfg.Config, handler: Callable[[http.Request], Any]
) -> tuple[Gateway, list[Notice]]:
    notices: list[Notice] = []
    factory = in_process_tools(FakeMcpServers(), http_transport=http.MockTransport(handler))
    gateway, _sink = build_gateway(tmp_path, config, notices=notices, tools_factory=factory)
    await nursery.start(gateway.serve)
    return gateway, notices


async def test_http_request_reaches_an_allowed_host_and_is_capped(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    seen: list[str] = []

    def handler(request: http.Request) -> http.Response:
        seen.append(f"{request.method} {request.url} {request.content.decode()}")
        return http.Response(200, content=b"0123456789abcdef")

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        args = {"method": "POST", "url": "https://api.example.com/x", "body": "hi"}
        reply = await ask(gateway, notices, f"/tool http_request {json.dumps(args)}")
        answer = json.loads(reply.text.removeprefix("tool http_request: "))
        assert (answer["status"], answer["body"], answer["truncated"]) == (200, "0123456789", True)
        assert seen == ["POST https://api.example.com/x hi"]
        denied = await ask(gateway, notices, '/tool http_request {"url": "https://evil.example.net/"}')
        assert "host 'evil.example.net' is not in tools.http.allowHosts" in denied.text
        assert len(seen) == 1
        assert gateway.tools is not None
        assert gateway.tools.outcomes == {("http", "ok"): 1, ("http", "denied"): 1}
        gateway.request_drain("stop", force=True)


async def test_a_silent_http_request_is_an_aborted_api_request(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async def handler(request: http.Request) -> http.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        started = trio.current_time()
        reply = await ask(gateway, notices, '/tool http_request {"url": "https://api.example.com/slow"}')
        assert "api_request aborted" in reply.text
        assert 10 <= reply.at - started <= 11.1
        gateway.request_drain("stop", force=True)


async def test_a_call_while_the_server_restarts_with_its_generation_waits_for_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Generation 2 offers generation 1's tool listing while its own server starts; a call
    made meanwhile waits for the server, inside its unit."""
    async with trio.open_nursery() as nursery:
        gateway, _sink, fakes, notices = await run_gateway(nursery, tmp_path, tools_config())
        fakes["files"].start_delay = 5
        await gateway.request_drain("restart").done.wait()
        restarted = trio.current_time()
        assert gateway.tools is not None
        assert gateway.tools.servers["files"].state == "starting"
        reply = await ask(gateway, notices, '/tool files__echo {"text": "after start"}')
        assert reply.text == "tool files__echo: after start"
        assert reply.at - restarted == pytest.approx(5, abs=0.1)
        gateway.request_drain("stop", force=True)


# --- streamable HTTP -----------------------------------------------------------------------------


async def test_a_streamable_http_server_answers_reports_progress_and_is_told_of_an_abort(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The production HTTP opener (the SDK's streamable HTTP client over our httpx2 client) with
    the header named by headersEnv, against the fake served over a MockTransport."""
    from trio_gateway.sim.fake_mcp import FakeMcpServer, http_transport
    from trio_gateway.tools.mcp import McpServer
    from trio_gateway.tools.transport import http_opener
    from trio_gateway.work.units import WorkRegistry

    fake = FakeMcpServer(name="search")
    log = EventLog([MemorySink()])
    registry = WorkRegistry(log)
    async with http_transport(fake) as transport, trio.open_nursery() as nursery:
        seen_auth: list[str] = []

        def client() -> http.AsyncClient:
            async def record(request: http.Request) -> None:
                seen_auth.append(request.headers.get("authorization", ""))

            return http.AsyncClient(transport=transport, event_hooks={"request": [record]})

        opener = http_opener("http://search.invalid/mcp", {"Authorization": "Bearer s3cret"}, client)
        server = McpServer("search", opener, log, max_result_bytes=1 << 20)
        nursery.start_soon(server.run)
        await until(lambda: server.state == "running")
        with registry.track("tool_call") as unit:
            answer = await server.call("echo", {"text": "over http"}, unit.progress)
        assert (answer.text, answer.outcome) == ("over http", "ok")
        with registry.track("tool_call") as unit:
            slow = await server.call("slow", {"seconds": 3, "every": 1}, unit.progress)
            assert unit.last_progress == "tool_call:search__slow progress 3/3"
        assert slow.text == "slow done"
        with registry.track("tool_call") as unit, trio.move_on_after(2):
            await server.call("hang", {}, unit.progress)
        await until(lambda: bool(fake.cancelled))
        assert seen_auth
        assert all(a == "Bearer s3cret" for a in seen_auth)
        nursery.cancel_scope.cancel()


async def test_a_slow_http_body_that_keeps_sending_is_never_aborted(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Each received chunk is progress: 12 chunks 5 s apart (60 s) under a 10 s threshold."""

    async def chunks() -> Any:
        for i in range(12):
            await trio.sleep(5)
            yield f"{i % 10}".encode()

    async def handler(request: http.Request) -> http.Response:
        await trio.lowlevel.checkpoint()
        return http.Response(200, content=chunks())

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        started = trio.current_time()
        reply = await ask(gateway, notices, '/tool http_request {"url": "https://api.example.com/stream"}')
        answer = json.loads(reply.text.removeprefix("tool http_request: "))
        assert answer["body"] == "0123456789"  # capped at maxResponseBytes = 10
        assert answer["truncated"] is True
        assert reply.at - started >= 55
        gateway.request_drain("stop", force=True)


def test_preflight_names_a_missing_header_secret() -> None:
    from trio_gateway.app.assemble import preflight

    config = cfg.parse(
        {
            "tools": {
                "mcpServers": {"search": {"url": "https://s.example/mcp", "headersEnv": {"Authorization": "S_AUTH"}}}
            }
        }
    )
    with pytest.raises(ConfigError) as info:
        preflight(config, {})
    assert str(info.value).startswith("tools.mcpServers.search.headersEnv.Authorization")
    assert "S_AUTH is not set" in str(info.value)
    preflight(config, {"S_AUTH": "Bearer x"})


async def test_a_turn_at_start_up_waits_for_its_servers_tool_listing(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    fakes = FakeMcpServers()
    fakes["files"].start_delay = 5
    notices: list[Notice] = []
    gateway, _sink = build_gateway(tmp_path, tools_config(), notices=notices, tools_factory=in_process_tools(fakes))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        started = trio.current_time()
        reply = await ask(gateway, notices, '/tool files__echo {"text": "first"}')
        assert reply.text == "tool files__echo: first"
        assert reply.at - started == pytest.approx(5, abs=0.1)
        gateway.request_drain("stop", force=True)


def test_a_stdio_server_gets_basics_its_env_and_named_secrets_never_the_gateways() -> None:
    from trio_gateway.app.assemble import preflight
    from trio_gateway.tools.registry import server_env

    raw = {"command": ["srv"], "env": {"ROOT": "/srv"}, "envFrom": {"GITHUB_TOKEN": "GW_GITHUB"}}
    config = cfg.parse({"tools": {"mcpServers": {"gh": raw}}})
    gateway_env = {"PATH": "/usr/bin", "HOME": "/root", "OPENAI_API_KEY": "sk-secret", "GW_GITHUB": "ghp_x"}
    assert server_env(config.tools.mcp_servers["gh"], gateway_env) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "ROOT": "/srv",
        "GITHUB_TOKEN": "ghp_x",
    }
    with pytest.raises(ConfigError, match=r"envFrom\.GITHUB_TOKEN: environment variable GW_GITHUB is not set"):
        preflight(config, {})
    with pytest.raises(ConfigError, match=r"tools.mcpServers.gh.envFrom.TOKEN"):
        cfg.parse({"tools": {"mcpServers": {"gh": {"command": ["srv"], "envFrom": {"TOKEN": "ghp_literal-value"}}}}})


async def test_a_bug_in_a_server_supervisor_stops_that_server_not_the_gateway(
    autojump_clock: trio.abc.Clock,
) -> None:
    from trio_gateway.tools.registry import build_toolbox
    from trio_gateway.work.units import WorkRegistry

    sink = MemorySink()
    log = EventLog([sink])
    box = build_toolbox(tools_config(), WorkRegistry(log), log, FakeMcpServers().opener_for)

    from trio_gateway.tools.mcp import McpServer

    class Broken(McpServer):
        async def run(self) -> None:
            await trio.sleep(1)
            raise RuntimeError("a bug")

    files = box.servers["files"]
    box.servers["files"] = Broken("files", files.opener, log, files.max_result_bytes)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run)
        await until(lambda: box.servers["other"].state == "running")
        await trio.sleep(2)
        assert box.servers["files"].last_error == "supervisor failed: RuntimeError('a bug')"
        assert box.servers["other"].state == "running"
        # Nothing waits for it any more: a turn's tool listing, a call (was: "starting" for
        # good, and a turn waited outside any unit, where no watchdog could abort it).
        assert box.servers["files"].state == "stopped"
        with trio.fail_after(1):
            await box.listed("main")
            with WorkRegistry(log).track("tool_call") as unit:
                failed = await box.servers["files"].call("echo", {}, unit.progress)
        assert "MCP server 'files' is stopped: supervisor failed" in failed.text
        nursery.cancel_scope.cancel()
    assert any(e.message == "MCP server supervisor failed; server stopped" for e in sink.events)


async def test_the_line_transport_splits_and_joins_messages_across_chunks(autojump_clock: trio.abc.Clock) -> None:
    import trio.testing

    from trio_gateway.tools.transport import pipe_link

    client, server = trio.testing.memory_stream_pair()
    ping = b'{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":%d}}'
    async with pipe_link(client, client) as link:
        await server.send_all(ping % 1 + b"\n" + ping % 2 + b"\n" + (ping % 3)[:10])
        await server.send_all((ping % 3)[10:40])
        await server.send_all((ping % 3)[40:] + b"\n\n")
        got = [await link.read.receive() for _ in range(3)]
        assert [m.message.params["progress"] for m in got] == [1, 2, 3]
        assert link.failure is None
        await server.send_all(b"not json\n")
        await link.dead.wait()
        assert link.failure == "the server wrote something that is not JSON-RPC: 'not json'"


async def test_an_abort_is_not_held_up_by_a_server_that_stopped_reading(autojump_clock: trio.abc.Clock) -> None:
    """A server busy in a blocking tool reads no more input and the pipe fills: the writer is
    stuck on the next request. Aborting a call must still end it at once; the SDK would hold
    the abort for up to 5 s handing over its `notifications/cancelled` if our writer took it
    only when free (a drain's cut would wait that long too)."""
    from contextlib import asynccontextmanager

    import trio.testing

    from trio_gateway.errors import WorkAbortedError
    from trio_gateway.sim.fake_mcp import FakeMcpServer
    from trio_gateway.tools.mcp import McpServer
    from trio_gateway.tools.transport import pipe_link
    from trio_gateway.work.units import WorkRegistry

    client, server_end = trio.testing.lockstep_stream_pair()  # no buffer: like a full pipe
    wedged = trio.Event()

    class Input(trio.abc.ReceiveStream):
        async def receive_some(self, max_bytes: int | None = None) -> bytes:
            if wedged.is_set():
                await trio.sleep_forever()
            return await server_end.receive_some(max_bytes)

        async def aclose(self) -> None:
            await server_end.aclose()

    async def send(data: bytes) -> None:
        await server_end.send_all(data)

    fake = FakeMcpServer(name="busy", on_event=lambda e: wedged.set() if e["event"] == "call" else None)

    @asynccontextmanager
    async def opener() -> Any:
        async with pipe_link(client, client) as link:
            yield link

    log = EventLog([MemorySink()])
    registry = WorkRegistry(log)
    server = McpServer("busy", opener, log, max_result_bytes=1 << 20)
    outcome: list[tuple[str, float]] = []
    units: list[Any] = []

    async def hang() -> None:
        try:
            with registry.track("tool_call") as unit:
                units.append(unit)
                await server.call("hang", {}, unit.progress)
        except WorkAbortedError:
            outcome.append(("aborted", trio.current_time()))

    async def second() -> None:
        with registry.track("tool_call") as unit:
            await server.call("echo", {"text": "queued"}, unit.progress)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fake.serve, Input(), send)
        nursery.start_soon(server.run)
        await until(lambda: server.state == "running")
        nursery.start_soon(hang)
        await wedged.wait()
        nursery.start_soon(second)
        nursery.start_soon(second)
        await trio.sleep(1)  # one request is stuck in the writer, the other waits for it
        aborted_at = trio.current_time()
        units[0].abort("test")
        await until(lambda: bool(outcome))
        assert outcome[0][1] - aborted_at < 0.5
        nursery.cancel_scope.cancel()


async def test_a_compressed_reply_is_cut_without_inflating_all_of_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """A gzip bomb (16 MiB of zeros in 16 KiB) is cut at the cap without ever holding the
    whole of it: httpx2 inflates in steps of at most 1 MiB and the tool stops reading at the
    cap. A guard for the client choice (a decoder that inflates a chunk whole would not pass)."""
    import gzip
    import tracemalloc

    bomb = gzip.compress(b"\0" * (16 << 20))

    async def wire() -> Any:  # streamed, as a real connection delivers it (bytes would be read at once)
        yield bomb

    def handler(request: http.Request) -> http.Response:
        return http.Response(200, content=wire(), headers={"content-encoding": "gzip"})

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        tracemalloc.start()
        try:
            reply = await ask(gateway, notices, '/tool http_request {"url": "https://api.example.com/x"}')
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        answer = json.loads(reply.text.removeprefix("tool http_request: "))
        assert (answer["body"], answer["truncated"]) == ("\0" * 10, True)
        assert peak < 8 << 20, peak  # inflating it whole would cost 16 MiB
        gateway.request_drain("stop", force=True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        # urllib drops the tab and sees an allowed host; httpx2 refuses the URL (was: internal error)
        ({"url": "https://evil.example.net\t@api.example.com/"}, "url is not valid"),
        # httpx2 cannot encode it (was: UnicodeEncodeError, the turn failed)
        ({"url": "https://api.example.com/", "headers": {"X-Note": "caf\u00e9"}}, "header 'X-Note'"),
        # a header injected into the request (refused before any client or parser sees it)
        ({"url": "https://api.example.com/", "headers": {"X-Bad": "a\r\nInjected: 1"}}, "header 'X-Bad'"),
    ],
)
async def test_a_request_the_client_would_refuse_is_denied_and_the_turn_goes_on(
    tmp_path: Path, autojump_clock: trio.abc.Clock, args: dict[str, Any], says: str
) -> None:
    seen: list[str] = []

    def handler(request: http.Request) -> http.Response:
        seen.append(str(request.url))
        return http.Response(200, content=b"ok")

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        reply = await ask(gateway, notices, f"/tool http_request {json.dumps(args)}")
        assert reply.text.startswith("tool http_request: "), reply.text
        error = json.loads(reply.text.removeprefix("tool http_request: "))["error"]
        assert says in error, error
        assert seen == []
        assert gateway.tools is not None
        assert gateway.tools.outcomes == {("http", "denied"): 1}
        gateway.request_drain("stop", force=True)


async def test_a_cookie_one_request_receives_is_never_sent_by_another(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """One client serves every session's http_request: a cookie jar on it would hand one
    user's login to another user's model. Each request carries only its own headers."""
    sent: list[str] = []

    def handler(request: http.Request) -> http.Response:
        sent.append(request.headers.get("cookie", ""))
        return http.Response(200, content=b"ok", headers={"set-cookie": "session=alice-secret; Path=/"})

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        for _ in range(2):
            await ask(gateway, notices, '/tool http_request {"url": "https://api.example.com/login"}')
        assert sent == ["", ""]
        gateway.request_drain("stop", force=True)


@pytest.mark.parametrize("header", ["Host", "host", "Content-Length", "Transfer-Encoding", "Connection"])
async def test_the_model_cannot_set_the_headers_that_route_or_frame_a_request(
    tmp_path: Path, autojump_clock: trio.abc.Clock, header: str
) -> None:
    """`Host: internal-admin` to an allowed front end reaches a virtual host nobody allowed;
    framing headers of its own can smuggle a second request past that front end."""
    seen: list[str] = []

    def handler(request: http.Request) -> http.Response:
        seen.append(request.headers.get("host", ""))
        return http.Response(200, content=b"ok")

    async with trio.open_nursery() as nursery:
        gateway, notices = await run_with_http(nursery, tmp_path, http_config(), handler)
        args = {"method": "POST", "url": "https://api.example.com/", "headers": {header: "0"}, "body": "x"}
        reply = await ask(gateway, notices, f"/tool http_request {json.dumps(args)}")
        error = json.loads(reply.text.removeprefix("tool http_request: "))["error"]
        assert f"header {header!r}" in error, error
        assert seen == []
        gateway.request_drain("stop", force=True)
