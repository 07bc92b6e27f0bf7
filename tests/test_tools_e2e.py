"""MCP servers as real stdio processes: the production transport, its bounded stop, restarts,
and a whole gateway restarting while a tool hangs. Waits poll on observed state under generous
deadlines; nothing asserts a tight wall-clock figure."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from helpers import Proc, cli, poll

from trio_gateway.log import EventLog, MemorySink
from trio_gateway.sim.fake_mcp import STDIO_COMMAND, process_state, read_events
from trio_gateway.tools.mcp import McpServer
from trio_gateway.tools.transport import EOF_GRACE_SECONDS, FLUSH_SECONDS, REAP_TIMEOUT_SECONDS, stdio_opener
from trio_gateway.work.units import WorkRegistry

pytestmark = pytest.mark.e2e

FAKE = STDIO_COMMAND
# The most a stdio server's stop may take with channelStopTimeoutSeconds = 2: the writer's last
# flush, stdin's end, SIGTERM, SIGKILL after 2 s, the reap.
STOP_BOUND = FLUSH_SECONDS + EOF_GRACE_SECONDS + 2 + REAP_TIMEOUT_SECONDS
events = read_events


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_state(server: McpServer, state: str, restarts: int = 0) -> None:
    with trio.fail_after(30):
        while server.state != state or server.restarts < restarts:  # noqa: ASYNC110 (a plain attribute, polled like the e2e tests do)
            await trio.sleep(0.02)


async def test_a_stdio_server_hangs_is_cancelled_crashes_restarts_and_stops(tmp_path: Path) -> None:
    log_file = tmp_path / "events.jsonl"
    opener = stdio_opener([*FAKE, "--events", str(log_file)], {}, stop_timeout=2.0, stderr_path=None)
    server = McpServer("files", opener, EventLog([MemorySink()]), max_result_bytes=1 << 20)
    registry = WorkRegistry(EventLog([MemorySink()]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await wait_state(server, "running")
        first_pid = server.pid
        assert first_pid is not None
        with registry.track("tool_call") as unit:
            with trio.move_on_after(0.5):
                await server.call("hang", {}, unit.progress)
        poll_events = lambda kind: [e for e in events(log_file) if e["event"] == kind]  # noqa: E731
        with trio.fail_after(10):
            while not poll_events("cancelled"):  # noqa: ASYNC110
                await trio.sleep(0.02)
        with registry.track("tool_call") as unit:
            answer = await server.call("echo", {"text": "same session"}, unit.progress)
        assert answer.text == "same session"
        with registry.track("tool_call") as unit:
            crashed = await server.call("crash", {}, unit.progress)
        assert crashed.outcome == "failed"
        assert "the server exited with code 3" in crashed.text
        await wait_state(server, "running", restarts=1)
        second_pid = server.pid
        assert second_pid is not None
        assert second_pid != first_pid
        assert not alive(first_pid)
        nursery.cancel_scope.cancel()
    assert server.state == "stopped"
    assert not alive(second_pid)  # stopped and reaped: no zombie answers kill(0)


def write_tools_config(home: Path, events_file: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    config = {
        "gateway": {"drain": {"timeoutSeconds": 2}, "channelStopTimeoutSeconds": 2,
                    "stalledTaskDetection": {"enabled": False}},
        "tools": {"mcpServers": {"files": {"command": [*FAKE, "--events", str(events_file)]}}},
        "agents": {"main": {"tools": ["files.*"]}},
    }  # fmt: skip
    (home / "gateway.json").write_text(json.dumps(config))


def test_restart_while_a_stdio_tool_hangs_completes_within_the_budget(
    tmp_path: Path, start_gateway: Callable[..., Proc]
) -> None:
    # Importing the MCP SDK adds a second or more to start-up: helpers.STARTUP_SECONDS (60 s) covers it.
    home, events_file = tmp_path / "home", tmp_path / "events.jsonl"
    write_tools_config(home, events_file)
    proc = start_gateway(home)
    try:
        status = poll("the MCP server", lambda: _running_server(proc), timeout=30)
        pid = status["pid"]
        assert "hang" in status["tools"]
        started = cli(home, "session", "start", "--agent", "main", "--channel", "console", "--to", "ops",
                      "--prompt", "/tool files__hang {}")  # fmt: skip
        assert started.returncode == 0, started.stderr
        poll("the hanging tool call", lambda: any(e["event"] == "call" for e in events(events_file)))
        done = cli(home, "gateway", "restart", "--json")
        assert done.returncode == 0, done.stderr
        drain = json.loads(done.stdout)["drain"]
        assert drain["timedOut"] is True
        assert drain["abortedWork"][0].startswith("tool_call session=")
        # The gateway's own figure: the 2 s deadline, the cut, and the server's bounded stop
        # (SIGTERM, SIGKILL after channelStopTimeoutSeconds = 2), all inside the drain report.
        # Asserted against the bound the transport promises, not a guess of how fast a busy
        # machine lets the server exit (that left ~1 s of slack for the scheduler).
        assert drain["waitedSeconds"] < 2 + STOP_BOUND
        assert not alive(pid)  # stopped and reaped before generation 2 started
        assert any(e["event"] == "cancelled" for e in events(events_file))
        again = poll("generation 2's server", lambda: _running_server(proc), timeout=30)
        assert again["pid"] != pid
        assert cli(home, "gateway", "stop").returncode == 0
        poll("the gateway to exit", lambda: proc.popen.poll() is not None, timeout=30)
        assert not alive(again["pid"])
    finally:
        for event in events(events_file):  # never leak a server, whatever failed above
            if event["event"] == "started" and alive(event["pid"]):
                os.kill(event["pid"], signal.SIGKILL)


def _running_server(proc: Proc) -> dict[str, Any] | None:
    servers: list[dict[str, Any]] = proc.http("GET", "/v1/status").json()["tools"]["mcpServers"]
    return servers[0] if servers and servers[0]["state"] == "running" else None


async def test_a_server_that_ignores_sigterm_is_killed_with_its_children(tmp_path: Path) -> None:
    """Deaf to stdin's end and to SIGTERM, with a child in its process group: the stop
    escalates to SIGKILL of the group after the stop timeout, and both are gone and reaped."""
    log_file = tmp_path / "events.jsonl"
    opener = stdio_opener([*FAKE, "--stubborn", "--events", str(log_file)], {}, stop_timeout=0.5, stderr_path=None)
    server = McpServer("stubborn", opener, EventLog([MemorySink()]), max_result_bytes=1 << 20)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.run)
        await wait_state(server, "running")
        pid = server.pid
        assert pid is not None
        nursery.cancel_scope.cancel()
    [child] = [e["childPid"] for e in events(log_file) if e["event"] == "child"]
    assert not alive(pid)
    # The child was reparented when its parent died; it is gone once init reaps it.
    poll("the server's child to be gone", lambda: process_state(child) != "alive", timeout=10)


async def test_a_stop_that_runs_out_of_time_still_leaves_no_process_zombie_or_pipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop's shielded deadline can expire before the reap (a process slow to die after
    SIGKILL; here no time at all is left for it): the group is still killed, the process
    reaped by a thread, its pipes closed, instead of a zombie for the gateway's lifetime."""
    from trio_gateway.tools import transport

    monkeypatch.setattr(transport, "REAP_TIMEOUT_SECONDS", -0.6)  # the deadline hits before SIGKILL
    log_file = tmp_path / "events.jsonl"
    opener = stdio_opener([*FAKE, "--stubborn", "--events", str(log_file)], {}, stop_timeout=0.5, stderr_path=None)
    server = McpServer("stubborn", opener, EventLog([MemorySink()]), max_result_bytes=1 << 20)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.run)
            await wait_state(server, "running")
            pid = server.pid
            assert pid is not None
            fds_before = len(os.listdir("/proc/self/fd"))
            nursery.cancel_scope.cancel()
        poll("the server to be gone and reaped", lambda: not alive(pid), timeout=10)
        [child] = [e["childPid"] for e in events(log_file) if e["event"] == "child"]
        poll("the server's child to be gone", lambda: process_state(child) != "alive", timeout=10)
        assert len(os.listdir("/proc/self/fd")) <= fds_before - 2  # its stdin and stdout closed
    finally:
        for event in events(log_file):  # never leak the stubborn server, whatever failed above
            if event["event"] == "started":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(event["pid"], signal.SIGKILL)
