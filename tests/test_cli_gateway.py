"""The CLI side of `gateway ...` and `session ...`: finding the gateway, errors, output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from trio_gateway.cli import main
from trio_gateway.cli.client import BadResponseError, Target, parse_response, pid_alive, remote_error
from trio_gateway.cli.gateway import _restart_line, progress_line, status_lines
from trio_gateway.errors import ConfigError, DeliveryValidationError, GatewayUnreachableError
from trio_gateway.storage.home import Home

STATUS = {
    "state": "draining",
    "generation": 3,
    "uptimeSeconds": 42.0,
    "sessions": [{"id": "s-1-1", "agent": "main", "state": "processing", "queueDepth": 1,
                  "origin": {"channel": "console", "to": "ops", "accountId": None}}],
    "work": [{"id": 1, "kind": "model_call", "sessionId": "s-1-1", "ageSeconds": 9.0,
              "lastProgress": "model_call:started", "lastProgressAgeSeconds": 8.6}],
    "stalled": [],
    "queue": {"pending": 2, "failed": 1},
    "drain": {"kind": "restart", "force": False, "timeoutSeconds": 60, "elapsedSeconds": 5, "remainingSeconds": 55.2},
}  # fmt: skip


def test_progress_line_names_the_blocking_work_and_time_left() -> None:
    assert progress_line(STATUS) == "draining generation 3: 1 blocking (model_call session=s-1-1 idle 9s), 55s left"
    assert progress_line({**STATUS, "state": "running"}) == ""


def test_status_lines() -> None:
    lines = status_lines(STATUS, 1234, "http://127.0.0.1:1")
    assert lines[0].startswith("state: draining  generation: 3  uptime: 42s  pid: 1234")
    assert "queue: 2 pending, 1 dead letter(s)" in lines
    assert any("s-1-1" in ln and "console:ops" in ln for ln in lines)


def test_restart_line_says_what_the_deadline_aborted() -> None:
    report = {"forced": False, "timedOut": True, "timeoutSeconds": 2.0, "waitedSeconds": 2.01,
              "abortedTasks": 1, "abortedWork": ["model_call session=s-1-1"]}  # fmt: skip
    line = _restart_line({"fromGeneration": 1, "generation": 2, "seconds": 2.3, "drain": report})
    assert line.startswith("restarted: generation 1 -> 2 in 2.30s (drain timeout 2s exceeded; aborted model_call")
    clean = {**report, "timedOut": False, "abortedWork": []}
    assert "drained cleanly" in _restart_line({"fromGeneration": 1, "generation": 2, "seconds": 0.1, "drain": clean})


def test_remote_errors_come_back_with_their_name_and_exit_code() -> None:
    exc = remote_error(400, json.dumps({"error": "DeliveryValidationError", "message": "channel=feishu"}).encode())
    assert isinstance(exc, DeliveryValidationError)
    assert (exc.exit_code, str(exc)) == (3, "channel=feishu")
    config = remote_error(400, b'{"error": "ConfigError", "message": "gateway.port: bad"}')
    assert isinstance(config, ConfigError)
    assert str(config) == "gateway.port: bad"
    assert "HTTP 502" in str(remote_error(502, b"<html>bad gateway</html>"))


def test_no_state_file_or_a_dead_pid_is_unreachable(tmp_path: Path) -> None:
    home = Home(tmp_path)
    with pytest.raises(GatewayUnreachableError, match="start one with: trio-gateway gateway start"):
        Target.find(home)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    home.state_path.write_text(json.dumps({"pid": dead.pid, "url": "http://127.0.0.1:1", "state": "running"}))
    assert not pid_alive(dead.pid)
    with pytest.raises(GatewayUnreachableError, match="is not running"):
        Target.find(home)


@pytest.mark.parametrize(
    "argv",
    [
        ["gateway", "restart"],
        ["session", "list"],
        ["session", "abort", "s-1"],
        ["session", "start", "--agent", "main", "--channel", "console", "--to", "x", "--prompt", "p"],
    ],
)
def test_commands_without_a_gateway_exit_1_with_the_contract_message(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"GatewayUnreachableError: no gateway running for home {tmp_path}")
    assert err.rstrip().endswith("(start one with: trio-gateway gateway start)")


def test_status_says_stopped_with_exit_3_and_stop_is_a_no_op_when_nothing_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--home", str(tmp_path), "gateway", "status", "--json"]) == 3
    assert json.loads(capsys.readouterr().out) == {"state": "stopped"}
    assert main(["gateway", "status", "--home", str(tmp_path)]) == 3  # global option after the command
    assert capsys.readouterr().out.startswith("state: stopped")
    assert main(["--home", str(tmp_path), "gateway", "stop", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": True, "wasRunning": False}
    assert list(tmp_path.iterdir()) == []  # and neither created anything


def test_start_with_a_bad_config_exits_2_before_taking_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "gateway.json").write_text('{"gateway": {"port": "80"}}')
    assert main(["--home", str(tmp_path), "gateway", "start"]) == 2
    assert capsys.readouterr().err.startswith("ConfigError: gateway.port")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.json"]


def test_the_cli_reads_whole_http_responses_and_refuses_anything_else() -> None:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    assert parse_response(head + b'content-length: 7\r\n\r\n{"a":1}') == (200, b'{"a":1}')
    chunked = head + b'Transfer-Encoding: chunked\r\n\r\n3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n'
    assert parse_response(chunked) == (200, b'{"a":1}')
    assert parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nno route") == (404, b"no route")
    with pytest.raises(BadResponseError, match="cut short"):
        parse_response(head + b"content-length: 70\r\n\r\n{}")
    with pytest.raises(BadResponseError, match="not an HTTP response"):
        parse_response(b"SSH-2.0-OpenSSH_9.2\r\n")
