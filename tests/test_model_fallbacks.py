"""SPEC 16 through a running gateway on trio's MockClock, with real clients against the fakes:
fallbacks and cool-downs, stall aborts failing over and drains never, usage in status and
/metrics, the daily token cap, and the context budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_gateway.http import metrics, views
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.models import build_model
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_anthropic import FakeAnthropic
from trio_gateway.sim.fake_model import FakeBehaviour, FakeModel
from trio_gateway.sim.runtime import Notice, gateway_deps, quick_config

KEY = "sk-ant-secret-0123456789abcdef"
ENV = {"ANTHROPIC_KEY": KEY, "OPENAI_KEY": "sk-openai-secret"}
CONSOLE = Origin("console", "ops", None)
CLAUDE = {"provider": "anthropic", "baseUrl": "http://claude.invalid", "apiKeyEnv": "ANTHROPIC_KEY",
          "model": "claude-test", "maxTokens": 256}  # fmt: skip
BACKUP = {"provider": "openai", "baseUrl": "http://backup.invalid/v1", "apiKeyEnv": "OPENAI_KEY", "model": "gpt-test"}


@attrs.define
class Rig:
    gateway: Gateway
    sink: MemorySink
    notices: list[Notice]
    claude: FakeAnthropic
    backup: FakeModel

    async def turn(self, prompt: str, origin: Origin = CONSOLE) -> str:
        before = len(self.notices)
        await self.gateway.submit(agent_id="main", origin=origin, prompt=prompt)
        await self.gateway.busy.wait_value(0)
        assert len(self.notices) == before + 1
        return self.notices[-1].text

    def failovers(self) -> list[str]:
        # The line without its timestamp and level.
        return [e.text().split(" ", 2)[2] for e in self.sink.tagged("MODEL") if e.message == "Failover"]


def rig(tmp_path: Path, claude: FakeBehaviour | None = None, **overrides: Any) -> Rig:
    settings = {
        "models.backup": BACKUP,  # first: each key is checked as it is set
        "models.claude": {**CLAUDE, "fallbacks": ["backup"]},
        "agents.main.model": "claude",
        "gateway.stalledTaskDetection.thresholdSeconds": 10,
        "gateway.stalledTaskDetection.checkIntervalSeconds": 1,
        **overrides,
    }
    config = quick_config(**settings)
    fakes: dict[str | None, FakeModel] = {
        "claude-test": FakeAnthropic(claude or FakeBehaviour()),
        "gpt-test": FakeModel(),
    }
    sink, notices = MemorySink(), []
    deps = gateway_deps(tmp_path, config, EventLog([sink]), notices=notices)

    def open_model(model_config: Any) -> Any:
        fake = fakes.get(model_config.model)
        return build_model(model_config, ENV, fake.transport() if fake is not None else None)

    deps = attrs.evolve(deps, model_factory=open_model)
    claude_fake = fakes["claude-test"]
    assert isinstance(claude_fake, FakeAnthropic)
    return Rig(Gateway(deps, config), sink, notices, claude_fake, fakes["gpt-test"])


async def test_overloaded_model_fails_over_and_cools_down(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="overloaded", retry_after_seconds=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        assert await r.turn("hello") == "hello"
        assert r.failovers() == ["[MODEL] Failover from=claude to=backup reason=overloaded sessionId=s-1-1"]
        # Cooling: the next turn goes straight to the backup, claude is not asked.
        assert await r.turn("again") == "again"
        assert len(r.claude.requests) == 1
        await trio.sleep(31)  # the first cool-down is 30 s: claude is asked again, fails again
        assert await r.turn("later") == "later"
        assert len(r.claude.requests) == 2
        await trio.sleep(31)  # the second failure in a row doubled it to 60 s: still cooling
        await r.turn("still cooling")
        assert len(r.claude.requests) == 2
        r.claude.behaviour = FakeBehaviour()
        await trio.sleep(30)
        assert await r.turn("recovered") == "recovered"
        assert len(r.claude.requests) == 3
        calls = views.status(r.gateway)["models"]["calls"]
        r.gateway.request_drain("stop")
    assert calls == {"backup": {"ok": 4}, "claude": {"ok": 1, "overloaded": 2}}


async def test_a_pings_only_stream_is_aborted_at_the_threshold_and_fails_over(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="pings", ping_interval_seconds=1))
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        start = trio.current_time()
        assert await r.turn("hello") == "hello"
        took = trio.current_time() - start
        r.gateway.request_drain("stop")
    # Pings every second are no progress: aborted at the 10 s threshold + at most one 1 s check.
    assert 10 <= took <= 11
    assert r.failovers() == ["[MODEL] Failover from=claude to=backup reason=stalled sessionId=s-1-1"]
    assert r.sink.tagged("AUTO-ABORT")


async def test_a_drain_never_fails_over(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="pings"), **{"gateway.drain.timeoutSeconds": 5})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        await r.gateway.submit(agent_id="main", origin=CONSOLE, prompt="hello")
        await trio.sleep(2)
        await r.gateway.request_drain("stop").done.wait()
    assert r.backup.requests == []
    assert r.failovers() == []


async def test_a_bad_request_ends_the_turn_naming_the_error_not_the_key(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="fail", status=400))
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        text = await r.turn("hello")
        r.gateway.request_drain("stop")
    assert text.startswith("Sorry, this request failed: model upstream answered HTTP 400")
    assert KEY not in text
    assert r.backup.requests == []


async def test_last_model_failing_ends_the_turn_with_its_error(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="fail", status=500))
    r.backup.behaviour = FakeBehaviour(mode="fail", status=502)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        text = await r.turn("hello")
        r.gateway.request_drain("stop")
    assert "HTTP 502" in text
    assert r.failovers() == ["[MODEL] Failover from=claude to=backup reason=server_error sessionId=s-1-1"]


async def test_usage_per_session_agent_and_model_in_status_and_metrics(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        await r.turn("one two three four five six seven eight")
        await r.turn("nine", Origin("console", "other"))
        status = views.status(r.gateway)
        exposition = metrics.render(r.gateway)
        r.gateway.request_drain("stop")
    by_session = {s["id"]: s["tokens"] for s in status["sessions"]}
    first, second = by_session["s-1-1"], by_session["s-1-2"]
    assert first["input"] > second["input"] > 0
    assert first["output"] > second["output"] > 0
    model = status["models"]["tokensByModel"]["claude"]
    assert model["total"] == first["total"] + second["total"]
    assert status["models"]["tokensByAgent"]["main"] == model
    assert f'trio_gateway_model_tokens_total{{direction="input",model="claude"}} {model["input"]}' in exposition
    assert 'trio_gateway_model_calls_total{model="claude",outcome="ok"} 2' in exposition


async def test_max_tokens_per_day_refuses_until_the_next_utc_day(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path, **{"agents.main.maxTokensPerDay": 20})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        assert await r.turn("a fairly long question that costs some tokens to answer") != ""
        refused = await r.turn("and another")
        requests = len(r.claude.requests)
        await trio.sleep(24 * 3600)  # the test wall clock starts at 03:21 UTC: tomorrow now
        tomorrow = await r.turn("a new day")
        r.gateway.request_drain("stop")
    assert refused == (
        "Sorry, this request failed: agent main has used its 20 tokens for today (UTC); "
        "it takes new requests again after 00:00 UTC"
    )
    assert requests == 1  # refused before any model was asked
    assert tomorrow == "a new day"


async def test_history_is_trimmed_by_whole_exchanges_to_the_context_budget(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    claude = {**CLAUDE, "contextTokens": 600, "maxTokens": 256, "fallbacks": ["backup"]}
    r = rig(tmp_path, **{"models.claude": claude})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        for i in range(6):
            await r.turn(f"question {i} " + "x" * 100)
        r.gateway.request_drain("stop")
    sent = r.claude.requests[-1].body["messages"]
    # 344 tokens for the prompt (the tools offered included): the last question and as many
    # whole exchanges as fit before it, never an answer without its question.
    assert sent[0]["role"] == "user"
    assert sent[-1]["content"][0]["text"].startswith("question 5")
    assert len(sent) % 2 == 1
    assert 1 < len(sent) < 11


async def test_alone_an_overloaded_model_is_asked_again_after_its_retry_after(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="overloaded", retry_after_seconds=2), **{"models.claude": CLAUDE})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)

        async def recover() -> None:
            await trio.sleep(1)
            r.claude.behaviour = FakeBehaviour()

        nursery.start_soon(recover)
        start = trio.current_time()
        assert await r.turn("hello") == "hello"
        took = trio.current_time() - start
        r.gateway.request_drain("stop")
    assert took == pytest.approx(2, abs=0.1)  # the retry-after, not the 30 s cool-down
    assert len(r.claude.requests) == 2
    assert [e.fields["inSeconds"] for e in r.sink.tagged("MODEL") if e.message == "Retrying"] == [2]


async def test_alone_retries_are_bounded_and_a_long_retry_after_is_not_sat_out(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="overloaded", retry_after_seconds=1), **{"models.claude": CLAUDE})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        text = await r.turn("hello")
        asked = len(r.claude.requests)
        r.claude.behaviour = FakeBehaviour(mode="overloaded", retry_after_seconds=120)
        start = trio.current_time()
        await r.turn("again")
        waited = trio.current_time() - start
        r.gateway.request_drain("stop")
    assert text.startswith("Sorry, this request failed: model upstream answered HTTP 529")
    assert asked == 3  # the call and two retries
    assert waited == pytest.approx(0, abs=0.1)
    assert len(r.claude.requests) == 4


async def test_a_restart_keeps_the_day_spend_and_the_cool_downs(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    r = rig(tmp_path, FakeBehaviour(mode="overloaded"), **{"agents.main.maxTokensPerDay": 20})
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        await r.turn("a fairly long question that costs some tokens to answer")  # claude fails, backup answers
        await r.gateway.request_drain("restart").done.wait()
        assert r.gateway.generation_number == 2
        refused = await r.turn("and another")
        cooling = views.status(r.gateway)["models"]["coolingSeconds"]
        r.gateway.request_drain("stop")
    assert "has used its 20 tokens for today" in refused
    assert set(cooling) == {"claude"}


async def test_a_turn_that_fails_after_a_failover_names_the_model_that_failed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """With fallbacks, "model upstream answered HTTP 400" alone does not say which upstream:
    the operator reading the turn's failure must not have to guess along the chain."""
    r = rig(tmp_path, FakeBehaviour(mode="overloaded"))
    r.backup.behaviour = FakeBehaviour(mode="fail", status=400)
    async with trio.open_nursery() as nursery:
        await nursery.start(r.gateway.serve)
        text = await r.turn("hello")
        r.gateway.request_drain("stop")
    assert text.startswith("Sorry, this request failed: model upstream answered HTTP 400")
    assert "(model backup)" in text
    failed = [e for e in r.sink.tagged("TURN") if e.message == "Turn ended with a failure"]
    assert "(model backup)" in str(failed[0].fields["error"])
