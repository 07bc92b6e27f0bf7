"""Operator commands against a real gateway process on loopback: `session start --wait`,
`dashboard`, `doctor` and `logs` while it runs."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Callable
from pathlib import Path

import httpx2
import pytest
from helpers import Proc, cli

pytestmark = pytest.mark.e2e


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_broken_agent(home: Path) -> None:
    """Agent `main` on the echo model; agent `broken` on a model whose upstream refuses."""
    config = {
        "gateway": {"testEndpoints": {"enabled": True}, "drain": {"timeoutSeconds": 2}},
        "models": {
            "default": {"provider": "echo"},
            "dead": {"baseUrl": f"http://127.0.0.1:{closed_port()}/v1", "model": "m", "stream": False},
        },
        "agents": {"main": {}, "broken": {"model": "dead"}},
    }
    home.mkdir(parents=True)
    (home / "gateway.json").write_text(json.dumps(config))


def test_session_start_wait_prints_the_reply_or_the_failure_notice(
    start_gateway: Callable[..., Proc], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with_broken_agent(home)
    gw = start_gateway(home)
    origin = ["--channel", "console", "--to", "ops"]
    ok = cli(home, "session", "start", "--agent", "main", *origin, "--prompt", "hello, wait for me", "--wait")
    assert ok.returncode == 0, ok.stderr
    assert "hello, wait for me" in ok.stdout
    failed = cli(home, "session", "start", "--agent", "broken", *origin, "--prompt", "this fails", "--wait")
    assert failed.returncode == 1
    assert failed.stdout.startswith("Sorry, this request failed")
    assert gw.health()["status"] == "ok"


def test_dashboard_prints_a_url_whose_code_logs_in_once(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    done = cli(gw.home, "dashboard")
    assert done.returncode == 0, done.stderr
    url = done.stdout.splitlines()[0]
    assert url.startswith(f"{gw.url}/ui#code=")
    code = url.split("#code=")[1]
    login = httpx2.post(f"{gw.url}/v1/ui/login", json={"code": code}, headers={"Origin": gw.url}, trust_env=False)
    assert login.status_code == 200
    cookie = login.cookies["tg_session"]
    status = httpx2.get(f"{gw.url}/v1/status", cookies={"tg_session": cookie}, trust_env=False)
    assert status.json()["state"] == "running"
    again = httpx2.post(f"{gw.url}/v1/ui/login", json={"code": code}, headers={"Origin": gw.url}, trust_env=False)
    assert again.status_code == 401


def test_doctor_and_logs_while_the_gateway_runs(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    doctor = cli(gw.home, "doctor", "--offline")
    assert doctor.returncode == 0, doctor.stdout
    assert f"running: pid {gw.popen.pid}" in doctor.stdout
    logs = cli(gw.home, "logs", "--json", "-n", "0")
    records = [json.loads(line) for line in logs.stdout.splitlines()]
    assert {"tag": "RESTART", "message": "generation=1 accepting work"}.items() <= records[-1].items()


def test_an_open_event_stream_does_not_hold_up_a_stop(start_gateway: Callable[..., Proc]) -> None:
    gw = start_gateway()
    auth = {"Authorization": f"Bearer {gw.token}"}
    with (
        httpx2.Client(trust_env=False, timeout=30) as client,
        client.stream("GET", f"{gw.url}/v1/events", headers=auth) as events,
    ):
        lines = events.iter_lines()
        assert next(lines).startswith(": trio-gateway events")
        assert any(line == "event: status" for line in lines)  # the stream is live
        done = cli(gw.home, "gateway", "stop")
        assert done.returncode == 0, done.stderr
        # The stream ends with the process: the server's connections go with its root nursery,
        # so the last chunk may not be sent (a browser's EventSource then shows "offline").
        with contextlib.suppress(httpx2.RemoteProtocolError):
            for _ in lines:
                pass
    assert gw.popen.wait(30) == 0
    assert "HTTP connections still open" not in gw.log  # not cut by the exit backstop
