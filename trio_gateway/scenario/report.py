"""A scenario run's result: expectations judged, the summary, and how it prints."""

from __future__ import annotations

import collections
from typing import Any

import attrs

from trio_gateway.policy import codec
from trio_gateway.scenario.expect import Observation
from trio_gateway.scenario.timeline import TimelineEntry


@attrs.frozen
class ExpectResult:
    expect: str
    passed: bool
    detail: str


@attrs.frozen
class ScenarioResult:
    name: str
    source: str
    passed: bool
    expectations: list[ExpectResult]
    timeline: list[TimelineEntry]
    summary: dict[str, Any]
    wall_seconds: float
    virtual_seconds: float

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = codec.unstructure(self)
        return data

    def failures(self) -> list[ExpectResult]:
        return [e for e in self.expectations if not e.passed]


def summary(obs: Observation, *, sessions: int, model_calls: int, pending: int) -> dict[str, Any]:
    """`channelRequests`: the worker's sends per channel by classified outcome; `httpRequests`:
    what reached each fake server, per operation (a Feishu token fetch is one too)."""
    sends: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for a in obs.attempts:
        sends[a.channel][a.outcome] += 1
    http: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in obs.requests:
        http[r.channel][r.op] += 1
    return {
        "generation": obs.generation,
        "sessions": sessions,
        "modelCalls": model_calls,
        "drains": [
            {
                "kind": d.kind,
                "forced": d.forced,
                "timedOut": d.timed_out,
                "timeoutSeconds": d.timeout_seconds,
                "waitedSeconds": round(d.waited_seconds, 3),
                "abortedTasks": d.aborted_tasks,
            }
            for d in obs.drains
        ],
        "restarts": [codec.unstructure(r) for r in obs.restarts],
        "stallsDetected": sum(1 for e in obs.events if e.tag == "STALLED SESSION DETECTED"),
        "channelRequests": {c: dict(v) for c, v in sorted(sends.items())},
        "httpRequests": {c: dict(v) for c, v in sorted(http.items())},
        "deliveriesPending": pending,
        "deadLetters": len(obs.dead_letters),
    }


def render(result: ScenarioResult) -> str:
    lines = [f"scenario {result.name} ({result.source})", "", "timeline (virtual seconds):"]
    lines += ["  " + e.line() for e in result.timeline]
    lines += ["", "summary:", *_summary_lines(result.summary)]
    lines.append(f"  ran {result.virtual_seconds:g} virtual s in {result.wall_seconds * 1000:.0f} ms wall")
    lines += ["", "expectations:"]
    lines += [f"  {'PASS' if e.passed else 'FAIL'}  {e.expect}: {e.detail}" for e in result.expectations]
    failed = result.failures()
    lines += ["", f"{len(failed)} expectation(s) failed" if failed else "all expectations passed"]
    return "\n".join(lines)


def _summary_lines(s: dict[str, Any]) -> list[str]:
    lines = [
        f"  generation {s['generation']}, {s['sessions']} session(s), {s['modelCalls']} model call(s), "
        f"{s['stallsDetected']} stall(s) detected"
    ]
    for d in s["drains"]:
        how = "timed out" if d["timedOut"] else "cleared"
        lines.append(
            f"  drain: {d['kind']}{' (forced)' if d['forced'] else ''} {how} after {d['waitedSeconds']:g}s "
            f"(timeout {d['timeoutSeconds']:g}s), aborted {d['abortedTasks']} task(s)"
        )
    for channel, counts in s["channelRequests"].items():
        http = s["httpRequests"].get(channel)
        wire = f" ({', '.join(f'{op} {n}' for op, n in sorted(http.items()))} over HTTP)" if http else ""
        lines.append(f"  channel {channel}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + wire)
    lines.append(f"  deliveries pending {s['deliveriesPending']}, dead letters {s['deadLetters']}")
    return lines
