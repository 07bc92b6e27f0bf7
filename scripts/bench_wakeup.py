"""Cluster mode (SPEC 12, issue 23): how long a delivery enqueued on one node waits before another
node claims it, woken by LISTEN/NOTIFY, against the poll-only reference in the same run.

    .venv/bin/python scripts/bench_wakeup.py [--quick] [--n N] [--poll-seconds P]

Node b is a real gateway process (`cluster.pollSeconds` P, default 0.2 s: the shipped default)
sending to a Slack stand-in on loopback that records when each message arrives. This process is
node a: it enqueues one entry at a time into the shared queue (it runs no delivery worker, so
only b can send it) and times it from just before the enqueue to the stand-in's receipt, which
is the enqueue's commit, b's wake-up and claim, and one loopback send. Rounds alternate between
an enqueue that NOTIFYs (the shipped behaviour) and one that does not (b finds it at its next
poll: the reference, the only way before issue 23), with a random pause between rounds so an
enqueue falls anywhere in b's poll period. Target: p50 <= 20 ms with the notification.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, percentile, table, temp_home, verdict, write_config

from trio_gateway.cluster.db import Database
from trio_gateway.cluster.node import ClusterNode
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.log import EventLog
from trio_gateway.policy.config import AgentConfig, ClusterConfig
from trio_gateway.sim.postgres import PgServer
from trio_gateway.sim.slow_slack import SlowSlack
from trio_gateway.work.clock import WallClock

ACCOUNT = "ws"
TARGET_MS = 20.0


def node_b_config(slack_url: str, poll_seconds: float) -> dict[str, Any]:
    return {
        "gateway": {"drain": {"timeoutSeconds": 2}},
        "channels": {"slack": {"accounts": {ACCOUNT: {"baseUrl": slack_url, "tokenEnv": "SLACK_BOT_TOKEN"}}}},
        "agents": {"main": {"accountId": ACCOUNT, "channels": ["slack"]}},
        "cluster": {"backend": "postgres", "nodeId": "b", "pollSeconds": poll_seconds},
    }


async def arrival(slack: SlowSlack, text: str, within: float = 30.0) -> float:
    with trio.fail_after(within):
        while True:
            for received in list(slack.received):
                if received.text == text:
                    return received.at
            await trio.sleep(0.001)


async def measure(dsn: str, slack: SlowSlack, n: int, poll_seconds: float) -> dict[str, list[float]]:
    clock = WallClock.start(dt.datetime.now(dt.UTC))
    log = EventLog([])
    db = Database.create(dsn, statement_timeout=10, max_size=2)
    node = ClusterNode.create(
        db, ClusterConfig(backend="postgres", node_id="a-bench"), log, clock.now, lease_seconds=60
    )
    await node.start()
    outbox = Outbox(node.queue, {"main": AgentConfig(account_id=ACCOUNT, channels=["slack"])}, clock, log)
    rng = random.Random(23)
    figures: dict[str, list[float]] = {"notify": [], "poll": []}
    try:
        for i in range(-6, 2 * n):  # six warm-up rounds: b's first sends open its HTTP client
            mode = "notify" if i % 2 == 0 else "poll"
            node.queue.wake_peers = mode == "notify"
            text = f"m{i}-{mode}"
            t0 = time.monotonic()
            await outbox.submit_manual("slack", f"C0123456{i % 50:02d}", ACCOUNT, None, text)
            took = await arrival(slack, text) - t0
            if i >= 0:
                figures[mode].append(took * 1000)
            await trio.sleep(rng.uniform(0, poll_seconds))
    finally:
        await node.leave(forget=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 rounds of each instead of 200")
    parser.add_argument("--n", type=int, default=None, help="rounds of each kind")
    parser.add_argument("--poll-seconds", type=float, default=0.2, help="node b's cluster.pollSeconds")
    args = parser.parse_args()
    n = args.n or (50 if args.quick else 200)
    banner("bench_wakeup", {"rounds of each": n, "pollSeconds": args.poll_seconds, "load": os.getloadavg()[0]})
    server = PgServer.start()
    slack = SlowSlack(delay=0.0).start()
    try:
        dsn = server.create_database("bench")
        with temp_home("bench-wakeup-") as home:
            write_config(home, node_b_config(slack.url, args.poll_seconds))
            env = {"TRIO_GATEWAY_PG_DSN": dsn, "SLACK_BOT_TOKEN": "token-b"}
            with GatewayProcess(home, env=env) as b:
                b.start(timeout=60)
                figures = trio.run(measure, dsn, slack, n, args.poll_seconds)
    finally:
        slack.stop()
        server.stop()
    rows = []
    for mode, label in (("notify", "LISTEN/NOTIFY (shipped)"), ("poll", "poll only (reference)")):
        values = figures[mode]
        rows.append(
            [
                label,
                len(values),
                f"{percentile(values, 50):.1f}",
                f"{percentile(values, 90):.1f}",
                f"{max(values):.1f}",
            ]
        )
    table(["enqueue on a -> sent by b", "n", "p50 ms", "p90 ms", "max ms"], rows)
    p50 = percentile(figures["notify"], 50)
    print(f"p50 with notifications {p50:.1f} ms (target <= {TARGET_MS:g} ms): {verdict(p50 <= TARGET_MS)}")


if __name__ == "__main__":
    main()
