"""Scripted restart rehearsals (SPEC 9): a TOML file run on the REAL runtime under MockClock.

Nothing here models the gateway: the run wires a real `Gateway` (sessions, watchdog, drain,
the on-disk delivery queue, its worker and the real channel adapters) to in-process fakes for
the two upstreams (`testing.harness`). The pieces, one idea each:

    scenario_format    the file's content as values (`[channels.C]`, `[[action]]` ...)
    scenario_parse     TOML in, a checked `Scenario` out, or an error naming line and key
    scenario_play      the actions performed at their virtual times
    scenario_expect    what a run observed, and the `[[expect]]` checks
    scenario_timeline  the event log as a folded timeline in virtual seconds
    scenario_run       harness + MockClock + observation -> `ScenarioResult`
    scenario_report    the result, its summary, and how it prints
"""

from __future__ import annotations

from trio_gateway.scenario.expect import EXPECT_TYPES, Expectation, Observation, RestartWithin
from trio_gateway.scenario.format import ACTION_TYPES, ChannelSpec, Scenario, ScenarioError, StartSession
from trio_gateway.scenario.parse import describe_file, load, parse_text
from trio_gateway.scenario.report import ScenarioResult, render
from trio_gateway.scenario.run import run, run_async

__all__ = [
    "ACTION_TYPES",
    "EXPECT_TYPES",
    "ChannelSpec",
    "Expectation",
    "Observation",
    "RestartWithin",
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "StartSession",
    "describe_file",
    "load",
    "parse_text",
    "render",
    "run",
    "run_async",
]
