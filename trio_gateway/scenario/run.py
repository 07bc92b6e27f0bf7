"""Running a scenario: the harness on a MockClock, the actions played, the run observed.

`trio.run(..., clock=MockClock(autojump_threshold=0))` makes a 60-second drain take
milliseconds; the timeline is read back from the event log, whose events carry the virtual
time they happened at.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import trio
import trio.testing

from trio_gateway.scenario.expect import Observation
from trio_gateway.scenario.format import Scenario
from trio_gateway.scenario.play import Player
from trio_gateway.scenario.report import ExpectResult, ScenarioResult, summary
from trio_gateway.scenario.timeline import timeline
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.harness import Harness, HarnessModel


def _build_harness(scenario: Scenario, home: Path) -> Harness:
    """The scenario's fakes, told how to answer, around a gateway with the scenario's config."""
    fakes = FakeChannels()
    for name, spec in scenario.channels.items():
        if name != "console":
            spec.apply(fakes, name)
    model = HarnessModel(scenario.model)
    return Harness.build(
        home, scenario.config, model=model, channels=fakes, seed=scenario.meta.seed, faults=scenario.faults
    )


async def _play(scenario: Scenario, harness: Harness) -> tuple[Player, float]:
    """Serve the gateway and play the actions until the scenario's time is up or it stops;
    returns the player and the end time."""
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        player = Player(harness, trio.current_time())
        player.note(f"scenario {scenario.meta.name or scenario.source}: generation 1 accepting work")
        if scenario.faults.any():
            nursery.start_soon(harness.faults.run, player.t0)
        nursery.start_soon(player.play, scenario.actions, nursery)
        with trio.move_on_at(player.t0 + scenario.meta.duration_seconds):
            await harness.gateway.state.wait_value("stopped")
        end = trio.current_time()
        player.note(f"scenario ends at {end - player.t0:g}s (state={harness.gateway.state.value})")
        nursery.cancel_scope.cancel()
    return player, end


async def run_async(scenario: Scenario, home: Path) -> ScenarioResult:
    """Run inside trio (on a MockClock: the caller's `trio.run` or pytest's `autojump_clock`)."""
    wall = time.perf_counter()
    harness = _build_harness(scenario, home)
    player, end = await _play(scenario, harness)
    obs = Observation(
        events=list(harness.sink.events),
        t0=player.t0,
        attempts=list(harness.tap.attempts),
        requests=list(harness.channels.requests),
        dead_letters=await harness.dead_letters(),
        restarts=player.restarts,
        drains=list(harness.gateway.drains),
        generation=harness.gateway.generation_number,
    )
    results = [ExpectResult(e.describe(), *e.check(obs)) for e in scenario.expects]
    counts = {"sessions": len(harness.gateway.sessions), "model_calls": harness.model.calls}
    return ScenarioResult(
        name=scenario.meta.name or Path(scenario.source).stem,
        source=scenario.source,
        passed=all(r.passed for r in results),
        expectations=results,
        timeline=timeline(obs.events, player.t0),
        summary=summary(obs, **counts, pending=len(await harness.pending())),
        wall_seconds=round(time.perf_counter() - wall, 4),
        virtual_seconds=round(end - player.t0, 6),
    )


def _scratch_dir() -> str | None:
    # The stores fsync every write; on tmpfs that costs nothing, and a rehearsal's home is
    # thrown away anyway. Elsewhere, the system's temporary directory.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run(scenario: Scenario, *, scratch: str | None = None) -> ScenarioResult:
    """Run on a fresh MockClock in a temporary home; returns when the scenario's time is up."""
    with tempfile.TemporaryDirectory(prefix="trio-gateway-scenario-", dir=scratch or _scratch_dir()) as tmp:
        clock = trio.testing.MockClock(autojump_threshold=0)
        result: ScenarioResult = trio.run(run_async, scenario, Path(tmp), clock=clock)
        return result
