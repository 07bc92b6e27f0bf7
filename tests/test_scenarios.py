"""The shipped scenarios pass; bad files fail clearly; the CLI prints and exits as specified."""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest

from trio_gateway import cli, scenario
from trio_gateway.scenario import ScenarioError, StartSession

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
# Run at full size by hand (`trio-gateway scenario run ten-thousand-sessions`): ~10 s of wall time.
LOAD = "ten-thousand-sessions.toml"
SHIPPED = sorted(p.name for p in SCENARIOS.glob("*.toml") if p.name != LOAD)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_scenario_passes(name: str) -> None:
    parsed = scenario.load(SCENARIOS / name)
    assert parsed.expects, "every shipped scenario states what must hold"
    assert scenario.describe_file(SCENARIOS / name), "every shipped scenario says what incident it rehearses"
    result = scenario.run(parsed)
    assert result.passed, scenario.render(result)


def test_seed_sixty_second_drain_runs_on_the_virtual_clock() -> None:
    parsed = scenario.load(SCENARIOS / "seed-stalled-model-restart.toml")
    result = scenario.run(parsed)
    assert result.summary["drains"][0]["waitedSeconds"] == pytest.approx(60.0, abs=0.01)
    assert result.summary["generation"] == 2


def test_load_scenario_scaled_down_keeps_the_restart_bound() -> None:
    parsed = scenario.load(SCENARIOS / LOAD)
    smaller = [attrs.evolve(a, count=a.count // 50) if isinstance(a, StartSession) else a for a in parsed.actions]
    expects: list[scenario.Expectation] = [e for e in parsed.expects if isinstance(e, scenario.RestartWithin)]
    result = scenario.run(attrs.evolve(parsed, actions=smaller, expects=expects))
    assert result.passed, scenario.render(result)
    assert result.summary["sessions"] == 200
    assert result.summary["channelRequests"]["console"]["ok"] == 198


def test_a_failing_expectation_is_named_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad-bound.toml"
    path.write_text(
        '[config]\n"gateway.drain.timeoutSeconds" = 60\n"gateway.stalledTaskDetection.enabled" = false\n'
        '[[action]]\nat = 0\ntype = "start_session"\nprompt = "/stall"\n'
        '[[action]]\nat = 1\ntype = "restart"\n'
        '[[expect]]\ntype = "restart_within"\nseconds = 30\n'
        '[[expect]]\ntype = "generation"\nreached = 2\n'
    )
    assert cli.main(["scenario", "run", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "FAIL  every restart completes within 30s of its request: took 60.000s" in out
    assert "PASS  generation 2 reached" in out
    assert err.strip() == "ExpectationFailed: every restart completes within 30s of its request: took 60.000s"


def test_json_output_is_machine_readable(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenario", "run", str(SCENARIOS / "rapid-restarts.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True
    assert data["summary"]["drains"][0]["kind"] == "restart"
    assert [e["passed"] for e in data["expectations"]] == [True] * 5
    assert any(t["tag"] == "DRAINING" and t["at"] == pytest.approx(1.0) for t in data["timeline"])


def test_list_shows_each_scenario_with_its_incident(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["scenario", "list", str(SCENARIOS)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(SHIPPED) + 1
    assert any(ln.startswith("seed-stalled-model-restart") and "blocked a restart" in ln for ln in lines)


BAD_FILES = [
    ('[[action]]\nat = 1\ntype = "reboot"\n', "line 1: action[0].type: expected one of start_session"),
    ('\n[[action]]\nat = "5"\ntype = "restart"\n', 'line 2: action[0].at: expected a number, got "5"'),
    (
        '[[action]]\nat = 0\ntype = "restart"\n\n[[action]]\nat = 1\ntype = "stop"\nforse = true\n',
        "line 5: action[1]: unknown key(s): forse",
    ),
    (
        '[config]\n"gateway.drain.timeoutSeconds" = 0\n',
        "line 1: config.gateway.drain.timeoutSeconds: must be between 0.001 and 86400",
    ),
    ('[channels.feishu]\nmode = "flaky"\n', 'line 1: channels.feishu.mode: expected one of "accept", "reject"'),
    ('[channels.console]\nmode = "fail"\n', "line 1: channels.console.mode: console has no fake server"),
    ('[[expect]]\ntype = "log"\n', "line 1: expect[0].tag: required key missing"),
    ("[modle]\n", "line 1: modle: unknown table"),
    ("[[action]\n", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES)
def test_bad_file_names_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as info:
        scenario.load(path)
    assert message in str(info.value)
    assert str(info.value).startswith(str(path))


def test_bad_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[action]]\nat = -1\ntype = "restart"\n')
    assert cli.main(["scenario", "run", str(path)]) == 2
    assert (
        capsys.readouterr().err.strip() == f"ScenarioError: {path}: line 1: action[0].at: must be zero or more seconds"
    )


def test_timeline_folds_repeats_but_keeps_other_tags() -> None:
    parsed = scenario.load(SCENARIOS / "retry-storm-during-drain.toml")
    result = scenario.run(parsed)
    tags = [t.tag for t in result.timeline]
    assert len(result.timeline) < 40
    assert tags.count("DRAINING") == 2
    assert sum(t.repeated for t in result.timeline) > 100


MISROUTED = """
[channels.feishu]
mode = "reject"

[channels.telegram]
mode = "rate_limit"
failTimes = 2
retryAfterSeconds = 7

[[action]]
at = 0
type = "inject_deliveries"
channel = "feishu"
to = "ou_not_in_this_app"

[[action]]
at = 0
type = "inject_deliveries"
channel = "telegram"
to = "12345"

[[expect]]
type = "dead_letter"
channel = "feishu"
reason = "HTTP 400 feishu_code 99992360 Invalid ids"
count = 1

[[expect]]
type = "delivery"
channel = "telegram"
to = "12345"
by = 14.5

[[expect]]
type = "no_request"
channel = "feishu"
"""


def test_channels_are_the_real_adapters_behind_http_fakes() -> None:
    result = scenario.run(scenario.parse_text(MISROUTED))
    assert [e.passed for e in result.expectations] == [True, True, False], scenario.render(result)
    # The real Feishu adapter fetched its tenant token, then sent once: a permanent rejection.
    assert result.summary["httpRequests"] == {"feishu": {"token": 1, "send": 1}, "telegram": {"send": 3}}
    assert result.summary["channelRequests"]["telegram"] == {"rate_limited": 2, "ok": 1}
    assert "2 request(s), first POST /open-apis/auth/v3/tenant_access_token/internal" in result.expectations[2].detail
