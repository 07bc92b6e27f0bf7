"""`trio-gateway session start|list|abort` (SPEC 4): against the running gateway."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from trio_gateway.cli import add_commands, seconds_argument
from trio_gateway.cli.client import REQUEST_TIMEOUT_SECONDS, GatewayClient
from trio_gateway.errors import GatewayError

if TYPE_CHECKING:
    from trio_gateway.cli import Context

WAIT_SECONDS = 600.0
MAX_WAIT_SECONDS = 86_400.0
# One long poll: well inside the client's per-request timeout.
POLL_SECONDS = REQUEST_TIMEOUT_SECONDS / 2


class TurnWaitTimeoutError(GatewayError):
    exit_code = 1


def register(parser: argparse.ArgumentParser) -> None:
    sub = add_commands(parser)
    start = sub.add_parser("start", help="start a turn as if a message came from that origin")
    start.add_argument("--agent", required=True)
    start.add_argument("--channel", required=True)
    start.add_argument("--to", required=True, help="the sender's address on that channel")
    start.add_argument("--prompt", required=True)
    start.add_argument("--account", help="account id (default: the agent's accountId)")
    start.add_argument(
        "--wait", action="store_true", help="wait for the reply (or failure notice), print it; exit 0 or 1"
    )
    start.add_argument(
        "--timeout",
        type=_wait_timeout,
        default=WAIT_SECONDS,
        metavar="S",
        help=f"with --wait (default {WAIT_SECONDS:g})",
    )
    start.set_defaults(func=_start)
    list_ = sub.add_parser("list", help="sessions the gateway knows")
    list_.add_argument("--json", action="store_true")
    list_.set_defaults(func=_list)
    abort = sub.add_parser("abort", help="cancel all of a session's work now")
    abort.add_argument("id")
    abort.set_defaults(func=_abort)


def _wait_timeout(text: str) -> float:
    return seconds_argument(text, 0.001, MAX_WAIT_SECONDS)


def _start(args: argparse.Namespace, ctx: Context) -> int:
    origin = {"channel": args.channel, "to": args.to, "accountId": args.account}
    body = {"agent": args.agent, "origin": origin, "prompt": args.prompt}
    with GatewayClient.connect(ctx.home) as client:
        answer = client.post("/v1/sessions", body)
        if not args.wait:
            print(answer["sessionId"])
            return 0
        outcome = _wait_for_turn(client, answer["sessionId"], answer["turnId"], time.monotonic() + args.timeout)
    print(outcome["text"])
    return 0 if outcome["ok"] else 1


def _wait_for_turn(client: GatewayClient, session_id: str, turn_id: str, deadline: float) -> dict[str, Any]:
    """Long-poll the gateway until the turn's reply or failure notice is enqueued. Each poll is
    shorter than the client's request timeout; a restart in between is fine (the gateway keeps
    the session and resumes the turn)."""
    path = f"/v1/sessions/{session_id}/turns/{turn_id}/wait"
    while (left := deadline - time.monotonic()) > 0:
        outcome: dict[str, Any] = client.post(path, {"timeoutSeconds": max(0.01, round(min(POLL_SECONDS, left), 3))})
        if outcome["state"] == "done":
            return outcome
    raise TurnWaitTimeoutError(f"no reply to turn {turn_id} within the wait (session {session_id} goes on)")


def _list(args: argparse.Namespace, ctx: Context) -> int:
    with GatewayClient.connect(ctx.home) as client:
        sessions = client.get("/v1/sessions")["sessions"]
    if args.json:
        print(json.dumps(sessions, indent=2, ensure_ascii=False))
    else:
        for row in session_rows(sessions):
            print(row)
        print(f"{len(sessions)} session(s)")
    return 0


def _abort(args: argparse.Namespace, ctx: Context) -> int:
    with GatewayClient.connect(ctx.home) as client:
        answer = client.post(f"/v1/sessions/{args.id}/abort")
    print(f"aborted {args.id}" if answer["aborted"] else f"{args.id} was idle; nothing to abort")
    return 0


def session_rows(sessions: list[dict[str, Any]]) -> list[str]:
    rows = []
    for s in sessions:
        o = s.get("origin") or {}
        origin = f"{o.get('channel')}:{o.get('to')}" if o else "-"
        rows.append(f"{s['id']:14} {s['agent']:10} {s['state']:10} queue={s['queueDepth']}{_tokens(s)}  {origin}")
    return rows


def _tokens(session: dict[str, Any]) -> str:
    """SPEC 16: the session's tokens since the gateway started (in, out)."""
    tokens = session.get("tokens")
    if not tokens:
        return ""
    return f"  tokens={tokens['total']} (in {tokens['input']}, out {tokens['output']})"
