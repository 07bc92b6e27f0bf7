"""`trio-gateway gateway start|restart|stop|status` (SPEC 4).

`start` runs the process in the foreground (`process.py`). The others talk to it over HTTP
(`client.py`) and follow what they asked for by polling: a restart is done when `/healthz`
shows the next generation ok, a stop when the process is gone. Every wait is bounded by the
drain's own deadline plus a margin, so the CLI can never wait longer than the gateway may.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from trio_gateway.cli import add_commands, seconds_argument
from trio_gateway.cli.client import GatewayClient, nothing_running
from trio_gateway.cli.session import session_rows
from trio_gateway.errors import GatewayError, GatewayUnreachableError

if TYPE_CHECKING:
    from trio_gateway.cli import Context

# Polls start quick (a forced restart is over in tens of milliseconds; a fixed 0.2 s poll was
# most of its time at the terminal) and back off to POLL_SECONDS for a long drain.
_FIRST_POLL_SECONDS = 0.01
POLL_SECONDS = 0.2
# `gateway status` when nothing runs: what `systemctl status` says for an inactive unit.
_NOT_RUNNING_EXIT = 3
# After the drain deadline the gateway may still spend bounded time on shielded cleanup and
# on closing clients (cleanupTimeoutSeconds, channelStopTimeoutSeconds), then reload config.
_MARGIN_SECONDS = 15.0


class RestartFailedError(GatewayError):
    exit_code = 1


class StopFailedError(GatewayError):
    exit_code = 1


def register(parser: argparse.ArgumentParser) -> None:
    sub = add_commands(parser)
    start = sub.add_parser("start", help="run the gateway in the foreground until stopped")
    start.add_argument("--port", type=int, help="HTTP port (0: any free port); default gateway.port")
    start.add_argument("--bind", help="HTTP bind address; default gateway.bind (loopback)")
    start.set_defaults(func=_start)
    for name, helptext, func in (
        ("restart", "drain and restart the running gateway; wait until it accepts work", _restart),
        ("stop", "drain and stop the running gateway; wait until it has exited", _stop),
    ):
        cmd = sub.add_parser(name, help=helptext)
        cmd.add_argument("--force", action="store_true", help="abort active work now instead of draining")
        cmd.add_argument("--timeout", type=_timeout, metavar="S", help="drain timeout in seconds for this drain")
        cmd.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
        cmd.set_defaults(func=func)
    status = sub.add_parser("status", help="state, generation, sessions, work, stalls, queue")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)


def _timeout(text: str) -> float:
    """`--timeout S`: the range the HTTP API accepts for timeoutSeconds (nan and 1e306 refused)."""
    from trio_gateway.policy.config import RANGES  # here: config imports cattrs, too heavy for `status`

    return seconds_argument(text, *RANGES["gateway.drain.timeoutSeconds"])


def _start(args: argparse.Namespace, ctx: Context) -> int:
    from trio_gateway.app import process  # the server side: only `gateway start` pays for it

    return process.start(process.StartOptions(ctx.home, ctx.log_format, args.port, args.bind))


def _drain_body(args: argparse.Namespace) -> dict[str, Any]:
    return {"force": args.force, "timeoutSeconds": args.timeout}


# --- restart ----------------------------------------------------------------------------------


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Follow(NamedTuple):  # not attrs: the CLI's light path (see home.py)
    """Polls a drain until `done()` says it is over, printing progress, under one deadline."""

    client: GatewayClient
    deadline: float
    quiet: bool
    failure: type[GatewayError] = RestartFailedError
    say: Callable[[str], None] = _to_stderr

    def until(self, done: Callable[[], bool], what: str) -> None:
        last = ""
        pause = _FIRST_POLL_SECONDS
        while not done():
            if time.monotonic() > self.deadline:
                raise self.failure(f"the gateway did not {what} in time (pid {self.client.target.pid})")
            line = self._progress()
            if line and line != last and not self.quiet:
                self.say(line)
                last = line
            time.sleep(pause)
            pause = min(pause * 2, POLL_SECONDS)

    def _progress(self) -> str:
        try:
            status = self.client.get("/v1/status")
        except GatewayUnreachableError:
            return ""
        return progress_line(status)


def progress_line(status: dict[str, Any]) -> str:
    drain = status.get("drain")
    if status.get("state") != "draining" or not drain:
        return ""
    blockers = [w for w in status.get("work", []) if w.get("kind") not in ("embedded_run", "delivery_attempt")]
    what = ", ".join(f"{w['kind']} session={w['sessionId']} idle {w['lastProgressAgeSeconds']:.0f}s" for w in blockers)
    left = f"{drain['remainingSeconds']:.0f}s left" if not drain.get("force") else "forced"
    return f"draining generation {status['generation']}: {len(blockers)} blocking ({what or 'none'}), {left}"


def _restart(args: argparse.Namespace, ctx: Context) -> int:
    started = time.monotonic()
    with GatewayClient.connect(ctx.home) as client:
        drain = client.post("/v1/gateway/restart", _drain_body(args))["drain"]
        before = int(drain["fromGeneration"])
        follow = _Follow(client, started + drain["remainingSeconds"] + _MARGIN_SECONDS, quiet=args.json)
        follow.until(lambda: _generation_ok(client, before), "come back with a new generation")
        drains = client.get("/v1/gateway/drains")
    took = time.monotonic() - started
    report = drains["drains"][-1] if drains["drains"] else None
    outcome = {"restarted": True, "fromGeneration": before, "generation": drains["generation"]}
    outcome |= {"seconds": round(took, 3), "drain": report}
    rejected = report.get("configRejected") if report else None
    if rejected:
        outcome["configRejected"] = rejected
    print(json.dumps(outcome) if args.json else _restart_line(outcome))
    if rejected:
        # The process restarted, but not on the configuration the operator asked for: a
        # script checking `$?` must not carry on as if the new gateway.json were live.
        print(f"ConfigError: new gateway.json rejected, previous configuration kept: {rejected}", file=sys.stderr)
        return 1
    return 0


def _generation_ok(client: GatewayClient, before: int) -> bool:
    """The restart is complete when /healthz answers ok with a newer generation. The process
    disappearing meanwhile is a failure, not something to keep polling for."""
    try:
        health = client.get("/healthz")
    except GatewayUnreachableError:
        if not client.target.alive():
            raise RestartFailedError(f"the gateway (pid {client.target.pid}) exited during the restart") from None
        return False
    return bool(health["status"] == "ok" and health["generation"] > before)


def _restart_line(outcome: dict[str, Any]) -> str:
    head = f"restarted: generation {outcome['fromGeneration']} -> {outcome['generation']} in {outcome['seconds']:.2f}s"
    if outcome.get("configRejected"):
        head += " on the PREVIOUS configuration (the new gateway.json was rejected)"
    report = outcome["drain"]
    if report is None:
        return head
    if report["forced"] or report["timedOut"]:
        why = "forced" if report["forced"] else f"drain timeout {report['timeoutSeconds']:g}s exceeded"
        aborted = "; ".join(report["abortedWork"]) or f"{report['abortedTasks']} task(s)"
        return f"{head} ({why}; aborted {aborted}; interrupted turns resume in the new generation)"
    return f"{head} (drained cleanly in {report['waitedSeconds']:.2f}s)"


# --- stop -------------------------------------------------------------------------------------


def _stop(args: argparse.Namespace, ctx: Context) -> int:
    if nothing_running(ctx.home):
        # Idempotent, as `systemctl stop` and `docker stop` are: the wanted state holds.
        print(json.dumps({"stopped": True, "wasRunning": False}) if args.json else "not running: nothing to stop")
        return 0
    started = time.monotonic()
    with GatewayClient.connect(ctx.home) as client:
        drain = client.post("/v1/gateway/stop", _drain_body(args))["drain"]
        deadline = started + drain["remainingSeconds"] + _MARGIN_SECONDS
        follow = _Follow(client, deadline, quiet=args.json, failure=StopFailedError)
        follow.until(lambda: not client.target.alive(), "exit")
    took = round(time.monotonic() - started, 3)
    outcome = {"stopped": True, "pid": client.target.pid, "fromGeneration": drain["fromGeneration"], "seconds": took}
    print(json.dumps(outcome) if args.json else f"stopped: gateway pid {client.target.pid} exited after {took:.2f}s")
    return 0


# --- status -----------------------------------------------------------------------------------


def _status(args: argparse.Namespace, ctx: Context) -> int:
    if nothing_running(ctx.home):
        print(
            json.dumps({"state": "stopped"}) if args.json else f"state: stopped (no gateway runs for {ctx.home.root})"
        )
        return _NOT_RUNNING_EXIT
    with GatewayClient.connect(ctx.home) as client:
        status = client.get("/v1/status")
        if args.json:
            print(json.dumps(status, indent=2, ensure_ascii=False))
        else:
            print("\n".join(status_lines(status, client.target.pid, client.target.url)))
    return 0


def _storage_line(storage: dict[str, Any]) -> str:
    node = f"  node: {storage['nodeId']}" if storage.get("nodeId") else ""
    return f"storage: {storage.get('backend', 'files')}{node}"


def _pairing_line(pairing: dict[str, Any] | None) -> list[str]:
    """SPEC 15: codes waiting for the operator's approval, and senders approved."""
    if pairing is None:  # a gateway from before pairing
        return []
    if "error" in pairing:
        return [f"pairing: unreadable ({pairing['error']})"]
    hint = "  (trio-gateway pairing list)" if pairing["pending"] else ""
    return [f"pairing: {pairing['pending']} pending code(s), {pairing['approvals']} approved sender(s){hint}"]


def status_lines(status: dict[str, Any], pid: int, url: str) -> list[str]:
    queue = status.get("queue", {})
    lines = [
        f"state: {status['state']}  generation: {status['generation']}  uptime: {status['uptimeSeconds']:.0f}s"
        f"  pid: {pid}  {url}" + (f"  version: {status['version']}" if "version" in status else ""),
        f"queue: {queue.get('pending', 0)} pending, {queue.get('failed', 0)} dead letter(s)",
        _storage_line(status.get("storage", {})),
        *_pairing_line(status.get("pairing")),
        f"stalled sessions: {', '.join(status.get('stalled', [])) or 'none'}",
        f"sessions ({len(status['sessions'])}):",
    ]
    lines += [f"  {row}" for row in session_rows(status["sessions"])]
    lines.append(f"work ({len(status['work'])}):")
    for w in status["work"]:
        lines.append(
            f"  {w['kind']:16} session={w['sessionId'] or '-'}  age={w['ageSeconds']:.0f}s"
            f"  last={w['lastProgress']} ({w['lastProgressAgeSeconds']:.0f}s ago)"
        )
    lines += _mcp_server_lines(status.get("tools", {}).get("mcpServers", []))
    lines += _model_lines(status.get("models", {}))
    if status.get("drain"):
        lines.append(progress_line(status) or f"drain: {status['drain']}")
    return lines


def _model_lines(models: dict[str, Any]) -> list[str]:
    """SPEC 16: tokens and call outcomes per model since start, and who is cooling down."""
    used = models.get("tokensByModel", {})
    if not used and not models.get("calls"):
        return []
    lines = [f"models ({len(used)} used):"]
    cooling = models.get("coolingSeconds", {})
    for name, calls in models.get("calls", {}).items():
        tokens = used.get(name, {})
        outcomes = " ".join(f"{k}={v}" for k, v in calls.items())
        cool = f"  cooling {cooling[name]:.0f}s" if name in cooling else ""
        lines.append(
            f"  {name:14} tokens={tokens.get('total', 0)} (in {tokens.get('input', 0)},"
            f" out {tokens.get('output', 0)})  calls: {outcomes}{cool}"
        )
    return lines


def _mcp_server_lines(servers: list[dict[str, Any]]) -> list[str]:
    """SPEC 14: each MCP server's state and its tools (none configured: no section)."""
    if not servers:
        return []
    lines = [f"mcp servers ({len(servers)}):"]
    for s in servers:
        why = f"  last error: {s['lastError']}" if s.get("lastError") else ""
        tools = ", ".join(s["tools"]) or "-"
        lines.append(f"  {s['name']:14} {s['state']:10} restarts={s['restarts']}  tools: {tools}{why}")
    return lines
