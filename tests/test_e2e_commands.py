"""Real processes on loopback (SPEC 15, issue 20 item 4): a person writes to the gateway through
the fake Telegram server, the turn's model call stalls on a real loopback upstream, and `/stop`
closes that upstream connection, answers `Stopped.`, leaves the turn `stopped` on disk, and a
`gateway restart` does not run it again."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import httpx2
import pytest
import trio
from helpers import WAIT_SECONDS, Proc, cli, poll

from trio_gateway.sim.fake_mcp import STDIO_COMMAND, read_events
from trio_gateway.sim.fake_model import FakeModel, serve_fake_model

pytestmark = pytest.mark.e2e
TG = "telegram"
PERSON = "4242"


@attrs.define
class Upstream:
    """The fake model on loopback, in a thread of this process: the test reads what it saw."""

    fake: FakeModel = attrs.Factory(FakeModel)
    url: str = ""
    token: trio.lowlevel.TrioToken | None = None
    scope: trio.CancelScope | None = None

    async def main(self, ready: queue.Queue[str]) -> None:
        self.token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as self.scope:
            async with trio.open_nursery() as nursery:
                ready.put(await nursery.start(serve_fake_model, self.fake))


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = Upstream()
    ready: queue.Queue[str] = queue.Queue()
    thread = threading.Thread(target=trio.run, args=(up.main, ready), daemon=True)
    thread.start()
    up.url = ready.get(timeout=WAIT_SECONDS)
    yield up
    assert up.scope is not None
    trio.from_thread.run_sync(up.scope.cancel, trio_token=up.token)
    thread.join(5)


@pytest.fixture
def fake_url() -> Iterator[str]:
    cmd = [sys.executable, "-m", "trio_gateway.sim.fake_channels", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        yield url
    finally:
        proc.kill()
        proc.wait(WAIT_SECONDS)


def push(url: str, text: str) -> None:
    body = {"action": "push", "channel": TG, "text": text, "sender": PERSON}
    httpx2.post(f"{url}/_fake/control", json=body, timeout=WAIT_SECONDS, trust_env=False).raise_for_status()


def answers(url: str) -> list[str]:
    reply = httpx2.get(f"{url}/_fake/messages", timeout=WAIT_SECONDS, trust_env=False)
    return [m["text"] for m in reply.json() if m["channel"] == TG]


def start(home: Path, fake: str, model_url: str | None, **more: object) -> Proc:
    config: dict[str, object] = {
        "gateway": {"drain": {"timeoutSeconds": 2}, "channelStopTimeoutSeconds": 2},
        "channels": {TG: {"accounts": {"tg": {"baseUrl": fake, "tokenEnv": "E2E_TG_TOKEN", "dmPolicy": "open"}}}},
        "agents": {"main": {"channels": [TG], "accountId": "tg"}},
        "delivery": {"initialBackoffSeconds": 0.2, "maxBackoffSeconds": 1},
        **more,
    }
    if model_url is not None:
        config["models"] = {"default": {"baseUrl": model_url, "model": "fake", "stream": True}}
    home.mkdir(parents=True, exist_ok=True)
    (home / "gateway.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    env = {**os.environ, "E2E_TG_TOKEN": "tg-e2e-secret"}
    popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env)
    return Proc(home, popen).wait_ready()


def stored_sessions(home: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted((home / "sessions").glob("*.json"))]


def test_stop_closes_the_upstream_answers_and_the_turn_is_never_resumed(
    tmp_path: Path, fake_url: str, upstream: Upstream
) -> None:
    home = tmp_path / "home"
    gw = start(home, fake_url, upstream.url)
    try:
        fake = upstream.fake
        push(fake_url, "/stall think about this forever")
        poll("the stalled model call upstream", lambda: fake.open_connections.value >= 1 and fake.received.value >= 1)
        push(fake_url, "/stop")
        poll("Stopped. on Telegram", lambda: answers(fake_url) == ["Stopped."], explain=lambda: str(answers(fake_url)))
        poll("the upstream to see its connection closed", lambda: len(fake.closed_at) >= 1)
        (session,) = stored_sessions(home)
        assert session["turns"] == []
        stopped = session["stopped"]
        assert isinstance(stopped, list)
        assert [t["status"] for t in stopped] == ["stopped"]
        assert "stopped by 4242" in gw.log  # the reason the turn's scope was cancelled with

        done = cli(home, "gateway", "restart")
        assert done.returncode == 0, done.stderr
        push(fake_url, "hello again")
        poll("the next reply", lambda: len(answers(fake_url)) == 2, explain=lambda: str(answers(fake_url)))
        assert answers(fake_url) == ["Stopped.", "hello again"]
        assert fake.received.value == 2  # the stopped turn never went upstream again
    finally:
        gw.stop_hard()


def test_stop_tells_a_stdio_mcp_server_its_call_is_cancelled(tmp_path: Path, fake_url: str) -> None:
    events = tmp_path / "mcp-events.jsonl"
    home = tmp_path / "home"
    tools = {"mcpServers": {"files": {"command": [*STDIO_COMMAND, "--events", str(events)]}}}
    agents = {"main": {"channels": [TG], "accountId": "tg", "tools": ["files.*"]}}
    gw = start(home, fake_url, None, tools=tools, agents=agents)  # the built-in echo model
    try:
        push(fake_url, "/tool files__hang {}")
        poll("the tool call at the server", lambda: any(e["event"] == "call" for e in read_events(events)))
        push(fake_url, "/stop")
        poll(
            "notifications/cancelled at the server", lambda: any(e["event"] == "cancelled" for e in read_events(events))
        )
        poll("Stopped. on Telegram", lambda: answers(fake_url) == ["Stopped."], explain=lambda: str(answers(fake_url)))
    finally:
        gw.stop_hard()
