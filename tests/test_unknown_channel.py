"""A channel name this version cannot speak is refused, with the same words, wherever
gateway.json is read or changed (issue 11): the names are the channel registry's (`KINDS`),
not a list in `policy.config`, so each reader must ask the registry. One test per entry point;
each checks that the refusal changed nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from test_http_api import TOKEN, Driver

import trio_gateway
from trio_gateway import scenario
from trio_gateway.app.assemble import load_config_from
from trio_gateway.channels import registry
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError
from trio_gateway.http.app import GatewayApp
from trio_gateway.scenario import ScenarioError
from trio_gateway.sim.runtime import build_gateway, quick_config
from trio_gateway.storage.home import Home

REFUSAL = "channels.pigeon: unknown channel; known: console, feishu, openclaw-weixin, slack, discord, telegram"
PIGEON = {"accounts": {"a": {"baseUrl": "http://127.0.0.1:9", "tokenEnv": "PIGEON_TOKEN"}}}


def run(home: Path, *argv: str) -> int:
    return main(["--home", str(home), *argv])


def write(home: Path, raw: dict[str, object]) -> str:
    home.mkdir(parents=True, exist_ok=True)
    text = json.dumps(raw)
    (home / "gateway.json").write_text(text)
    return text


def test_the_refusal_names_every_kind_of_the_registry() -> None:
    assert REFUSAL.endswith(", ".join(registry.NAMES))


def test_the_loader_and_the_public_api_refuse_it(tmp_path: Path) -> None:
    write(tmp_path, {"channels": {"pigeon": PIGEON}})
    with pytest.raises(ConfigError) as info:
        registry.load_config(tmp_path / "gateway.json")
    assert f"ConfigError: {info.value}" == f"ConfigError: {REFUSAL}"
    assert (info.value.exit_code, info.value.http_status) == (2, 400)
    with pytest.raises(ConfigError, match=f"^{REFUSAL}$"):
        trio_gateway.load_config(tmp_path / "gateway.json")
    with pytest.raises(ConfigError, match=f"^{REFUSAL}$"):
        quick_config(**{"channels.pigeon": PIGEON})


def test_gateway_start_refuses_it_before_taking_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "gateway", "start") == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gateway.json"]  # no token, lock, log or state


async def test_a_restart_onto_it_keeps_the_running_config(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    home = Home(tmp_path / "home")
    write(home.root, {"gateway": {"drain": {"timeoutSeconds": 7}}})
    load = load_config_from(home)  # production's reader
    gateway, sink = build_gateway(home.root, load(), load_config=load)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        write(home.root, {"gateway": {"drain": {"timeoutSeconds": 9}}, "channels": {"pigeon": PIGEON}})
        reply = await Driver(GatewayApp(gateway, TOKEN, {}))("POST", "/v1/gateway/restart", {"wait": True})
        assert (reply.status, reply.json["generation"]) == (200, 2)
        assert reply.json["drain"]["configRejected"] == REFUSAL
        assert gateway.config.gateway.drain.timeout_seconds == 7
        assert [e.fields.get("error") for e in sink.tagged("RESTART") if e.level == "ERROR"] == [REFUSAL]
        gateway.request_drain("stop", force=True)


def test_config_set_refuses_it_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write(tmp_path, {"gateway": {"drain": {"timeoutSeconds": 7}}})
    assert run(tmp_path, "config", "set", "channels.pigeon", json.dumps(PIGEON)) == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")
    assert (tmp_path / "gateway.json").read_text() == before


def test_config_unset_on_a_file_with_it_refuses_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = write(tmp_path, {"gateway": {"drain": {"timeoutSeconds": 7}}, "channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "config", "unset", "gateway.drain.timeoutSeconds") == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")
    assert (tmp_path / "gateway.json").read_text() == before


def test_config_validate_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = write(tmp_path, {"channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "config", "validate") == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")
    assert (tmp_path / "gateway.json").read_text() == before


def test_doctor_fails_the_config_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "doctor", "--offline") == 1
    config_lines = [line for line in capsys.readouterr().out.splitlines() if line.split()[1:2] == ["config"]]
    assert len(config_lines) == 1
    assert config_lines[0].startswith("FAIL")
    assert config_lines[0].endswith(f"ConfigError: {REFUSAL}")


def test_delivery_list_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "delivery", "list") == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")


def test_cluster_status_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, {"channels": {"pigeon": PIGEON}})
    assert run(tmp_path, "cluster", "status") == 2
    assert capsys.readouterr().err.startswith(f"ConfigError: {REFUSAL}")


def test_a_scenario_channel_table_refuses_it() -> None:
    with pytest.raises(ScenarioError) as info:
        scenario.parse_text("[channels.slack]\n\n[channels.pigeon]\n")
    assert str(info.value) == f"<scenario>: line 3: {REFUSAL}"


def test_a_scenario_config_table_refuses_it() -> None:
    text = '[config.channels.pigeon.accounts.a]\nbaseUrl = "http://127.0.0.1:9"\ntokenEnv = "PIGEON_TOKEN"\n'
    with pytest.raises(ScenarioError) as info:
        scenario.parse_text(text)
    assert str(info.value).endswith(f"config.{REFUSAL}")


@pytest.mark.parametrize(
    "raw",
    [
        {"channels": {"pigeon": {"accounts": {"a": {}}}}},  # its account lacks baseUrl too
        {"channels": {"pigeon": {"accounts": {"a": {}}}}, "agents": {}},  # and there is no agent
    ],
)
def test_a_typo_in_a_channel_name_is_named_before_what_it_causes(tmp_path: Path, raw: dict[str, object]) -> None:
    """The name is checked where the channels section is, first: a misspelt channel gets the
    refusal that names it, not an error about a key its (unknown) account lacks."""
    text = write(tmp_path, raw)
    with pytest.raises(ConfigError, match=f"^{REFUSAL}$"):
        registry.load_config(tmp_path / "gateway.json")
    assert run(tmp_path, "config", "set", "gateway.port", "8080") == 2
    assert run(tmp_path, "config", "validate") == 2
    assert (tmp_path / "gateway.json").read_text() == text
