"""Cluster mode (SPEC 12): throughput of the shared PostgreSQL queue against the file queue, and
how fast work moves to a survivor, all in one run against a throwaway PostgreSQL.

    .venv/bin/python scripts/bench_cluster.py [--quick] [--n N] [--concurrency C]

1. Durable deliveries/s (enqueue committed, claim + send mark, send to an in-memory channel,
   ack committed), N entries, C producers and worker concurrency C per node, each node its own
   process (so two nodes have two interpreters, as in production):
   - file queue, one node (the reference: today's default);
   - PostgreSQL, one node;
   - PostgreSQL, two nodes on one database (each enqueues N/2; either may deliver any entry).
   Targets: two nodes >= 1.6x one node; one node on PostgreSQL >= 0.8x the file queue.
2. Takeover after SIGKILL: two real gateway processes, a slow Slack stand-in on loopback; node
   a is killed with sends in flight; time from the kill to b's first send of an entry a held.
   Target <= deadAfterSeconds + 1 s.
3. Release at drain: node a is stopped (SIGTERM) with sends in flight; time from the signal to
   b's first send of an entry a released. Target <= 0.5 s.
4. The same for a turn: a stalled model call on a; after a SIGKILL (from the kill) or a stop
   (from the end of a's drain, whose deadline cut the turn first), until b delivered the resumed
   turn's reply. Targets: deadAfterSeconds + 1 s; 0.5 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, table, temp_home, verdict

from trio_gateway.channels.base import OK, Outcome
from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.sim.postgres import PgServer
from trio_gateway.sim.runtime import quick_config
from trio_gateway.sim.slow_slack import SlowSlack
from trio_gateway.storage.atomic import in_thread
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry

HEARTBEAT_SECONDS = 0.5
DEAD_AFTER_SECONDS = 2.0


# --- 1. one node's run, in its own process (`--node`) -----------------------------------------


@attrs.define
class NullChannel:
    deduplicates: bool = True
    sent: int = 0

    async def send(self, entry: DeliveryEntry) -> Outcome:
        await trio.lowlevel.checkpoint()
        self.sent += 1
        return OK

    def get(self, channel: str, account_id: str | None) -> NullChannel:
        return self

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def node_run(backend: str, root: Path, dsn: str, node_id: str, n: int, c: int) -> None:
    overrides: dict[str, Any] = {"delivery.concurrency": c, "delivery.rescanIntervalSeconds": 0.2}
    config = quick_config(**overrides)
    log = EventLog([])
    channel = NullChannel()
    if backend == "file":
        from trio_gateway.delivery.service import QueueDelivery
        from trio_gateway.storage.queue import DeliveryQueue

        queue: Any = DeliveryQueue(root / "delivery-queue", in_thread, log)
        service: Any = QueueDelivery.build(queue, channel, config, WallClock.start(), log, WorkRegistry(log))
        node = None
    else:
        from trio_gateway.cluster.db import Database
        from trio_gateway.cluster.node import ClusterNode
        from trio_gateway.cluster.pg_delivery import PgDelivery

        cluster = attrs.evolve(config.cluster, backend="postgres", node_id=node_id, heartbeat_seconds=HEARTBEAT_SECONDS)
        db = Database.create(dsn, statement_timeout=10, max_size=c + 4)
        clock = WallClock.start()
        node = ClusterNode.create(db, cluster, log, clock.now, lease_seconds=60)
        await node.start()
        queue = node.queue
        service = PgDelivery.build(queue, channel, config, clock, log, WorkRegistry(log))
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        if node is not None:
            nursery.start_soon(node.run)

        async def produce(count: int) -> None:
            for i in range(count):
                await service.outbox.submit_manual("console", "bench", None, "main", f"m{i}")

        async with trio.open_nursery() as producers:
            for k in range(c):
                producers.start_soon(produce, n // c + (1 if k < n % c else 0))
        await _until_drained(backend, queue)
        took = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
    print(json.dumps({"seconds": took, "sent": channel.sent}), flush=True)


async def _until_drained(backend: str, queue: Any) -> None:
    """Until every entry (this node's and, on PostgreSQL, every node's) is acked."""
    while True:
        if backend == "file":
            if not await queue.pending_ids() and not await queue.list_inflight():
                return
        elif (await queue.counts())["pending"] == 0:
            return
        await trio.sleep(0.05)


def run_nodes(backend: str, nodes: int, n: int, c: int, dsn: str) -> tuple[float, int]:
    """Start `nodes` node processes, release them together, wait until the queue is empty;
    returns (wall seconds from release to the last node done, entries sent)."""
    with temp_home("bench-cluster-") as root:
        procs = []
        for k in range(nodes):
            cmd = [sys.executable, __file__, "--node", backend, "--root", str(root), "--dsn", dsn]
            cmd += ["--node-id", f"n{k}", "--n", str(n // nodes), "--concurrency", str(c)]
            procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        for p in procs:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        t0 = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        sent = 0
        for p in procs:
            assert p.stdout is not None
            sent += json.loads(p.stdout.readline())["sent"]
            p.wait(60)
        return time.perf_counter() - t0, sent


def fresh_db(server: PgServer, name: str) -> str:
    return server.create_database(name)


# --- 2 and 3: real gateways, one slow channel --------------------------------------------------


def gateway_config(name: str, slack_url: str) -> dict[str, Any]:
    return {
        "gateway": {"drain": {"timeoutSeconds": 2}, "testEndpoints": {"enabled": True}},
        "channels": {"slack": {"accounts": {"ws": {"baseUrl": slack_url, "tokenEnv": "SLACK_BOT_TOKEN"}}}},
        "agents": {"main": {"accountId": "ws", "channels": ["slack"]}},
        "cluster": {
            "backend": "postgres",
            "nodeId": name,
            "heartbeatSeconds": HEARTBEAT_SECONDS,
            "deadAfterSeconds": DEAD_AFTER_SECONDS,
        },
    }


def start_gateway(root: Path, name: str, dsn: str, slack: SlowSlack) -> GatewayProcess:
    home = root / name
    home.mkdir()
    (home / "gateway.json").write_text(json.dumps(gateway_config(name, slack.url)))
    gw = GatewayProcess(home, env={"TRIO_GATEWAY_PG_DSN": dsn, "SLACK_BOT_TOKEN": f"token-{name}"})
    gw.start(60)
    return gw


def first_resend_after(slack: SlowSlack, held: set[str], since: float, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in slack.by_token("token-b"):
            if r.text in held and r.at >= since:
                return r.at - since
        time.sleep(0.002)
    return float("nan")


def handover(dsn: str, *, kill: bool) -> float:
    """Seconds from a's SIGKILL (or SIGTERM) to b's first send of an entry a held."""
    import httpx2

    slack = SlowSlack(delay=0.0).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            a = start_gateway(Path(tmp), "a", dsn, slack)
            b = start_gateway(Path(tmp), "b", dsn, slack)
            try:
                slack.gate.clear()  # every send waits: a holds its claims in flight
                with httpx2.Client(timeout=30) as client:
                    for i in range(40):
                        body = {"channel": "slack", "to": "C0123456789", "accountId": "ws", "text": f"m{i}"}
                        r = client.post(f"{a.base_url}/v1/deliveries", json=body, headers=a.headers)
                        r.raise_for_status()
                deadline = time.monotonic() + 30
                while len(slack.by_token("token-a")) < 8 and time.monotonic() < deadline:
                    time.sleep(0.005)
                held = {r.text for r in slack.by_token("token-a")}
                assert a.proc is not None
                slack.blocked.add("token-a")  # a's sends stay in flight until it is gone
                since = time.monotonic()
                if kill:
                    a.proc.kill()
                else:
                    a.proc.terminate()
                slack.gate.set()  # b's sends go through from now on
                took = first_resend_after(slack, held, since)
                a.proc.wait(30)
                return took
            finally:
                a.stop()
                b.stop()
    finally:
        slack.stop()


def reply_time(home: Path, key: str, timeout: float = 30.0) -> float:
    """time.time() when a console reply with this idempotency key appeared in `home`."""
    path = home / "logs" / "console.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and f'"idempotencyKey": "{key}"' in path.read_text():
            return time.time()
        time.sleep(0.002)
    return float("nan")


def log_time(home: Path, needle: str) -> float:
    """The wall time of the first line of `home`'s log containing `needle` (NaN if none)."""
    for line in (home / "logs" / "gateway.log").read_text().splitlines():
        if needle in line:
            stamp = line.split()[0].rstrip("Z")
            return dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC).timestamp()
    return float("nan")


def turn_handover(dsn: str, *, kill: bool) -> tuple[float, float]:
    """A stalled turn on a; a is SIGKILLed (from the kill) or stopped (from the end of its
    drain, whose deadline cut the turn, `[SHUTDOWN]`): seconds until b resumed the turn
    (`Resuming interrupted turn`), and until b had delivered its reply."""
    import httpx2

    slack = SlowSlack(delay=0.0).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
            a = start_gateway(Path(tmp), "a", dsn, slack)
            b = start_gateway(Path(tmp), "b", dsn, slack)
            try:
                with httpx2.Client(timeout=30) as client:
                    stalled = client.post(
                        f"{a.base_url}/internal/test/stall-model-call", json={"durationMs": 600_000}, headers=a.headers
                    ).json()
                    deadline = time.monotonic() + 30
                    while time.monotonic() < deadline:
                        work = client.get(f"{a.base_url}/v1/status", headers=a.headers).json()["work"]
                        if any(w["kind"] == "model_call" for w in work):
                            break
                        time.sleep(0.01)
                assert a.proc is not None
                since = time.time()
                if kill:
                    a.proc.kill()
                else:
                    a.proc.terminate()
                replied = reply_time(b.home, stalled["turnId"])
                a.proc.wait(60)
                if not kill:
                    since = log_time(a.home, "[SHUTDOWN]")
                resumed = log_time(b.home, f"Resuming interrupted turn sessionId={stalled['sessionId']}")
                return resumed - since, replied - since
            finally:
                a.stop()
                b.stop()
    finally:
        slack.stop()


# --- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--node", choices=["file", "pg"])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--node-id", default="n0")
    args = parser.parse_args()
    if args.node:
        trio.run(node_run, args.node, args.root, args.dsn, args.node_id, args.n, args.concurrency)
        return
    n = args.n or (1000 if args.quick else 4000)
    c = args.concurrency
    banner("bench_cluster", {"n": n, "concurrency per node": c, "deadAfterSeconds": DEAD_AFTER_SECONDS})
    server = PgServer.start()
    try:
        file_s, file_sent = run_nodes("file", 1, n, c, "")
        one_s, one_sent = run_nodes("pg", 1, n, c, fresh_db(server, "one"))
        two_s, two_sent = run_nodes("pg", 2, n, c, fresh_db(server, "two"))
        rate = {k: n / s for k, s in (("file", file_s), ("one", one_s), ("two", two_s))}
        table(
            ["setup", "entries sent", "seconds", "deliveries/s", "ratio", "target"],
            [
                ["file queue, 1 node (reference)", file_sent, file_s, rate["file"], 1.0, ""],
                ["PostgreSQL, 1 node", one_sent, one_s, rate["one"], rate["one"] / rate["file"], "≥ 0.8× file"],
                ["PostgreSQL, 2 nodes", two_sent, two_s, rate["two"], rate["two"] / rate["one"], "≥ 1.6× 1 node"],
            ],
            title="Durable deliveries/s",
        )
        print(f"one node vs file: {verdict(rate['one'] >= 0.8 * rate['file'])}; ", end="")
        print(f"two nodes vs one: {verdict(rate['two'] >= 1.6 * rate['one'])}")
        takeover = handover(fresh_db(server, "kill"), kill=True)
        release = handover(fresh_db(server, "drain"), kill=False)
        turn_takeover, turn_takeover_reply = turn_handover(fresh_db(server, "turnkill"), kill=True)
        turn_release, turn_release_reply = turn_handover(fresh_db(server, "turndrain"), kill=False)
        bound = DEAD_AFTER_SECONDS + 1
        table(
            ["event", "survivor resumed after (s)", "its reply delivered after (s)", "target", "verdict"],
            [
                ["SIGKILL, 8 sends in flight: first resent delivery", takeover, takeover, f"≤ {bound:g} s",
                 verdict(takeover <= bound)],
                ["SIGTERM, 8 sends in flight: first resent delivery", release, release, "≤ 0.5 s",
                 verdict(release <= 0.5)],
                ["SIGKILL, stalled turn", turn_takeover, turn_takeover_reply, f"≤ {bound:g} s",
                 verdict(turn_takeover <= bound)],
                ["stop, stalled turn cut by the drain (from its end)", turn_release, turn_release_reply, "≤ 0.5 s",
                 verdict(turn_release <= 0.5)],
            ],
            title="Work moving to the survivor",
        )  # fmt: skip
        print(f"measured {dt.date.today()}; from the signal, the drained turn from a's [SHUTDOWN] line (log times)")
    finally:
        server.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
