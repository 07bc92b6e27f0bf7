"""The HTTP API's JSON (SPEC 4): pure functions from the gateway's state to JSON-ready dicts.

`http/` answers with these and the dashboard's stream sends them; the gateway itself only keeps
its state. Each key is spelled as SPEC 4 spells it; a change here is a change of the API.
"""

from __future__ import annotations

from typing import Any

import trio

from trio_gateway.runtime.gateway import Gateway
from trio_gateway.runtime.session import Session
from trio_gateway.version import __version__
from trio_gateway.work.drain import DrainReport, DrainRequest


def health(gateway: Gateway) -> dict[str, Any]:
    """`GET /healthz`."""
    state = "ok" if gateway.state.value == "running" else "draining"
    return {"status": state, "generation": gateway.generation_number, "version": __version__}


def status(gateway: Gateway) -> dict[str, Any]:
    """`GET /v1/status` (and `gateway status --json`), at trio's current time."""
    now = trio.current_time()
    units = gateway.registry.units()
    stalled = sorted({u.session_id or "-" for u in units if u.stall_reported})
    work = [
        {
            "id": u.id,
            "kind": u.kind,
            "sessionId": u.session_id,
            "ageSeconds": round(u.age(now), 3),
            "lastProgress": u.last_progress,
            "lastProgressAgeSeconds": round(u.idle_for(now), 3),
        }
        for u in units
    ]
    queue = gateway.delivery.counts() if gateway.delivery is not None else {"pending": 0, "failed": 0}
    body: dict[str, Any] = {
        # SPEC 4 names running and draining; starting and stopped are shown as they are
        # (visible only for an instant, but a script should not be told a lie).
        "state": gateway.state.value,
        "generation": gateway.generation_number,
        "version": __version__,
        "uptimeSeconds": round(now - gateway.started_at, 3),
        "sessions": sessions(gateway),
        "work": work,
        "stalled": stalled,
        "queue": queue,
        "channels": gateway.listeners.status() if gateway.listeners is not None else [],
        # Where state lives (files or PostgreSQL), disks refusing writes (new work gets 507
        # meanwhile) and log lines lost to a bad disk.
        "storage": {
            **gateway.deps.describe_storage(),
            "full": dict(gateway.storage.full),
            "logWriteFailures": gateway.log.failed_writes,
        },
        "tools": {"mcpServers": gateway.tools.status() if gateway.tools is not None else []},
    }
    if gateway.draining is not None:
        body["drain"] = drain_status(gateway.draining, now)
    return body


def sessions(gateway: Gateway) -> list[dict[str, Any]]:
    """`GET /v1/sessions`: the sessions in memory (an evicted idle one is on disk only)."""
    return [_session(gateway, s) for s in gateway.sessions.values()]


def _session(gateway: Gateway, session: Session) -> dict[str, Any]:
    o = session.record.origin
    subagents = [{"id": s.id, "agent": s.agent, "depth": s.depth, "state": s.state} for s in session.subagents.values()]
    return {
        "id": session.id,
        "agent": session.record.agent,
        "state": "processing" if session.busy else "idle",
        "queueDepth": gateway.table.queue_depth(session.id),
        "origin": None if o is None else {"channel": o.channel, "to": o.to, "accountId": o.account_id},
        "subagents": subagents,
        "pendingTurns": len(session.record.turns),
    }


def drain_status(request: DrainRequest, now: float) -> dict[str, Any]:
    """A drain in progress: in `status` and in the 202 of a restart or stop request."""
    return {
        "kind": request.kind,
        "force": request.force,
        "timeoutSeconds": request.timeout_seconds,
        "elapsedSeconds": round(now - request.requested_at, 3),
        "remainingSeconds": round(max(0.0, request.deadline - now), 3),
    }


def drain_report(report: DrainReport) -> dict[str, Any]:
    """A finished drain: `GET /v1/drains`, a restart's outcome, the dashboard."""
    return {
        "kind": report.kind,
        "forced": report.forced,
        "timedOut": report.timed_out,
        "timeoutSeconds": report.timeout_seconds,
        "waitedSeconds": round(report.waited_seconds, 3),
        "abortedTasks": report.aborted_tasks,
        "abortedWork": list(report.aborted_work),
        **({"configRejected": report.config_rejected} if report.config_rejected else {}),
    }


def drains(gateway: Gateway) -> dict[str, Any]:
    """`GET /v1/drains`: the completed drains of this process, oldest first."""
    return {"generation": gateway.generation_number, "drains": [drain_report(r) for r in gateway.drains]}


def restart_outcome(gateway: Gateway) -> dict[str, Any]:
    """What `POST /v1/gateway/restart` with `"wait": true` answers once the new generation runs."""
    report = gateway.drains[-1] if gateway.drains else None
    return {"generation": gateway.generation_number, "drain": None if report is None else drain_report(report)}
