"""The operator's commands: logs, doctor, token create, completion; and the config rules that
keep `config set` from making something the operator did not mean."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trio_gateway.cli import main
from trio_gateway.cli.logs import follow
from trio_gateway.errors import ConfigError
from trio_gateway.policy import config as cfg
from trio_gateway.policy.env_check import NamedSecret, missing_secrets


def run(home: Path, *argv: str) -> int:
    return main(["--home", str(home), *argv])


# --- logs -------------------------------------------------------------------------------------

LOG = """2026-06-15T03:21:00.000Z INFO [RESTART] generation=1 accepting work
2026-06-15T03:21:01.000Z WARN [DELIVERY] Channel=slack id=01A to=C0123456789 Retry 1/20 in 1.0s reason="HTTP 503"
{"ts": "2026-06-15T03:21:02Z", "level": "INFO", "tag": "DELIVERY", "message": "Success", "channel": "slack"}
"""


def write_log(home: Path, text: str = LOG) -> Path:
    path = home / "logs" / "gateway.log"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_logs_prints_the_last_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path)
    assert run(tmp_path, "logs", "-n", "2") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[0].endswith('Retry 1/20 in 1.0s reason="HTTP 503"')


def test_logs_json_splits_text_lines_and_keeps_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_log(tmp_path)
    assert run(tmp_path, "logs", "--json") == 0
    first, second, third = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first == {
        "ts": "2026-06-15T03:21:00.000Z",
        "level": "INFO",
        "tag": "RESTART",
        "message": "generation=1 accepting work",
    }
    assert (second["level"], second["tag"]) == ("WARN", "DELIVERY")
    assert third["channel"] == "slack"


def test_logs_on_a_home_without_a_log_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "typo"
    assert run(home, "logs") == 1
    assert not home.exists()


def test_follow_prints_appended_lines_across_a_rotation(tmp_path: Path) -> None:
    path = write_log(tmp_path, "old line\n")
    seen: list[str] = []
    with path.open() as f:
        f.read()
        with path.open("a") as w:
            w.write("appended\n")
        follow(path, f, seen.append, stop=lambda: len(seen) >= 1)
        path.rename(path.with_name("gateway.log.1"))
        path.write_text("after rotation\n")
        follow(path, f, seen.append, stop=lambda: len(seen) >= 2)
    assert seen == ["appended", "after rotation"]


# --- token create -----------------------------------------------------------------------------


def test_token_create_makes_a_0600_token_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert run(home, "token", "create") == 0
    token_file = home / "gateway.token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 40
    assert run(home, "token", "create", "--print") == 0
    out = capsys.readouterr().out
    assert "created (mode 0600)" in out
    assert out.splitlines()[-1] == token  # the same token: never overwritten


def test_token_create_writes_the_file_named_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secrets" / "gateway_token"
    monkeypatch.setenv("TRIO_GATEWAY_TOKEN_FILE", str(secret))
    assert run(tmp_path / "home", "token", "create") == 0
    assert secret.read_text().strip()
    assert not (tmp_path / "home" / "gateway.token").exists()


# --- doctor -----------------------------------------------------------------------------------


@pytest.fixture
def answering_server() -> Iterator[str]:
    class Quiet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_doctor_names_each_problem_on_its_own_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, answering_server: str
) -> None:
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-secret-value")
    monkeypatch.delenv("FEISHU_APP_SECRET", raising=False)
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    config = {
        "gateway": {"port": busy.getsockname()[1]},
        "channels": {
            "slack": {"accounts": {"T1": {"baseUrl": answering_server, "tokenEnv": "SLACK_BOT_TOKEN"}}},
            "feishu": {
                "accounts": {
                    "app": {
                        "baseUrl": f"http://127.0.0.1:{closed_port()}",
                        "appId": "cli_x",
                        "appSecretEnv": "FEISHU_APP_SECRET",
                    }
                }
            },
        },
        "agents": {"main": {"channels": ["slack", "feishu"]}},
    }
    (tmp_path / "gateway.json").write_text(json.dumps(config))
    with busy:
        assert run(tmp_path, "doctor") == 1
    out = capsys.readouterr().out
    lines = {line.split()[1] + " " + line.split()[0]: line for line in out.splitlines()}
    assert "xoxb-secret-value" not in out
    assert "FEISHU_APP_SECRET is not set (named by channels.feishu.accounts.app.appSecretEnv)" in out
    assert lines["home ok"]
    assert lines["config ok"]
    assert lines["port FAIL"].endswith("Address already in use")
    assert f"channels.slack.accounts.T1: {answering_server} answers" in out
    assert "channels.feishu.accounts.app" in next(ln for ln in out.splitlines() if ln.startswith("FAIL  upstream"))
    assert "token" in out


def test_doctor_on_a_missing_home_warns_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "nowhere"
    assert run(home, "doctor", "--offline") == 0
    out = capsys.readouterr().out
    assert out.startswith("warn  home")
    assert "does not exist yet" in out
    assert not home.exists()


def test_doctor_flags_a_token_others_can_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token = tmp_path / "gateway.token"
    token.write_text("x" * 43)
    os.chmod(token, 0o644)
    assert run(tmp_path, "doctor", "--offline") == 1
    assert "is open to group or others (mode 0644); run: chmod 600" in capsys.readouterr().out


# --- named secrets, config rules ---------------------------------------------------------------


def test_named_secrets_are_found_wherever_the_config_names_them() -> None:
    raw = {
        "models": {"fw": {"baseUrl": "https://x", "apiKeyEnv": "FW_KEY", "model": "m"}},
        "tools": {"mcpServers": {"search": {"headersEnv": {"Authorization": "SEARCH_AUTH"}}}},
        "cron": [{"origin": {"fooEnv": "IN_A_LIST"}}],
    }
    assert missing_secrets(raw, {"FW_KEY": "set"}) == [
        NamedSecret("tools.mcpServers.search.headersEnv.Authorization", "SEARCH_AUTH"),
        NamedSecret("cron[0].origin.fooEnv", "IN_A_LIST"),
    ]


def test_a_model_name_alone_is_refused_not_made_an_echo_model() -> None:
    with pytest.raises(ConfigError, match=r"models\.gpt\.baseUrl: a model needs a provider"):
        cfg.parse({"models": {"gpt": {"model": "gpt-4o"}}})
    assert cfg.parse({"models": {"gpt": {"provider": "echo", "model": "gpt-4o"}}}).models["gpt"].kind == "echo"


# --- completion -------------------------------------------------------------------------------


def complete(tmp_path: Path, script: str, words: list[str]) -> list[str]:
    path = tmp_path / "completion.sh"
    path.write_text(script)
    array = " ".join(f"'{w}'" for w in words)
    probe = f"source {path}; COMP_WORDS=({array}); COMP_CWORD={len(words) - 1}; _trio_gateway; echo ${{COMPREPLY[*]}}"
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.split()


def test_bash_completion_offers_commands_subcommands_options_and_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "completion", "bash") == 0
    script = capsys.readouterr().out
    assert complete(tmp_path, script, ["trio-gateway", "gateway", "re"]) == ["restart"]
    assert complete(tmp_path, script, ["trio-gateway", "--home", "/tmp", "gateway", "st"]) == [
        "start",
        "stop",
        "status",
    ]
    restart_options = complete(tmp_path, script, ["trio-gateway", "gateway", "restart", "--"])
    assert {"--force", "--timeout", "--json", "--home"} <= set(restart_options)
    assert complete(tmp_path, script, ["trio-gateway", "--log-format", ""]) == ["text", "json"]
    assert complete(tmp_path, script, ["trio-gateway", "scenario", ""]) == ["run", "list", "--home", "--log-format"]
    assert complete(tmp_path, script, ["trio-gateway", "completion", "z"]) == ["zsh"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "completion", "zsh") == 0
    path = tmp_path / "completion.zsh"
    path.write_text(capsys.readouterr().out)
    assert subprocess.run(["zsh", "-n", str(path)], timeout=30).returncode == 0


# --- config unset, validate --env -------------------------------------------------------------


def test_config_unset_restores_the_default_and_refuses_what_is_not_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "config", "set", "gateway.drain.timeoutSeconds", "5") == 0
    assert run(tmp_path, "config", "unset", "gateway.drain.timeoutSeconds") == 0
    assert "default 60.0" in capsys.readouterr().out
    assert json.loads((tmp_path / "gateway.json").read_text()) == {}  # emptied objects go too
    assert run(tmp_path, "config", "unset", "gateway.port") == 2
    assert "ConfigError: gateway.port: is not set in gateway.json" in capsys.readouterr().err


def test_config_unset_that_would_break_the_file_writes_nothing(tmp_path: Path) -> None:
    model = '{"baseUrl": "http://127.0.0.1:9", "model": "m"}'
    assert run(tmp_path, "config", "set", "models.fw", model) == 0
    before = (tmp_path / "gateway.json").read_text()
    assert run(tmp_path, "config", "unset", "models.fw.model") == 2
    assert (tmp_path / "gateway.json").read_text() == before


def test_config_validate_env_names_each_missing_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = '{"baseUrl": "http://127.0.0.1:9", "model": "m", "apiKeyEnv": "TG_TEST_KEY"}'
    assert run(tmp_path, "config", "set", "models.fw", model) == 0
    monkeypatch.delenv("TG_TEST_KEY", raising=False)
    assert run(tmp_path, "config", "validate") == 0
    assert run(tmp_path, "config", "validate", "--env") == 2
    assert "ConfigError: models.fw.apiKeyEnv: environment variable TG_TEST_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("TG_TEST_KEY", "value")
    assert run(tmp_path, "config", "validate", "--env") == 0


def test_config_set_model_alone_exits_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "config", "set", "models.gpt.model", "gpt-4o") == 2
    assert "models.gpt.baseUrl: a model needs a provider" in capsys.readouterr().err
    assert not (tmp_path / "gateway.json").exists()


# --- delivery: create to an unconfigured channel, list on a missing home ------------------------


def test_delivery_create_to_an_unconfigured_channel_exits_3_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(tmp_path, "delivery", "create", "--channel", "slack", "--to", "C0123456789", "--text", "hi") == 3
    err = capsys.readouterr().err
    assert err.startswith("DeliveryValidationError: channel=slack: not configured on this gateway")
    queue = tmp_path / "delivery-queue"
    assert not queue.exists() or [p for p in queue.iterdir() if p.is_file()] == []
    assert run(tmp_path, "delivery", "create", "--channel", "console", "--to", "ops", "--text", "hi") == 0


def test_delivery_list_on_a_missing_home_is_an_error_and_creates_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "typo"
    assert run(home, "delivery", "list") == 1
    assert "no gateway home at" in capsys.readouterr().err
    assert not home.exists()


def test_token_create_metrics_prints_a_separate_read_only_token_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    assert run(home, "token", "create", "--metrics") == 0
    printed = capsys.readouterr().out.strip()
    metrics_file = home / "metrics.token"
    assert stat.S_IMODE(metrics_file.stat().st_mode) == 0o600
    assert metrics_file.read_text().strip() == printed
    assert not (home / "gateway.token").exists()  # the admin token is another file
    assert run(home, "token", "create", "--metrics") == 0
    assert capsys.readouterr().out.strip() == f"{metrics_file}: exists; kept"  # printed once
    assert metrics_file.read_text().strip() == printed
