"""Turn handoff in cluster mode (SPEC 12, issue 23): a turn accepted on node A for a session
node B owns, until it starts on B, against a turn accepted on B itself, in one run.

    .venv/bin/python scripts/bench_handoff.py [--turns N]

Two real gateway processes on one throwaway PostgreSQL, one fake model server (OpenAI's wire)
served by this script. One conversation is started on B (B owns its session); then its turns
alternate: one `POST /v1/sessions` to A (handed to B through the database, B woken by
LISTEN/NOTIFY), one to B (the reference: accepted and started where the session lives). Each is
timed from the moment the request is sent to the moment the model request of that turn reaches
the fake server (the turn started, on B, with its history): both clocks are this process's.
Then the turn's outcome is awaited with `POST .../turns/{id}/wait` on the node that accepted
it, so a handed-off turn's `wait` is answered on A from what B recorded.
Target: handoff p50 <= 50 ms on loopback.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, median, percentile, table, temp_home, verdict, write_config

from trio_gateway import upstream as http
from trio_gateway.sim.fake_model import FakeModel, Plan, serve_fake_model
from trio_gateway.sim.postgres import PgServer

TARGET_P50_SECONDS = 0.050


@attrs.define(eq=False)
class TimedFake(FakeModel):
    """The fake model, noting when each prompt's request arrived (this process's clock)."""

    arrived: dict[str, float] = attrs.Factory(dict)
    _event: trio.Event = attrs.Factory(trio.Event)

    def record(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[Plan, list[bytes]]:
        at = time.perf_counter()
        plan = super().record(method, path, headers, raw)
        messages = self.requests[-1].body.get("messages") or [{}]
        self.arrived.setdefault(str(messages[-1].get("content")), at)
        self._event.set()
        self._event = trio.Event()
        return plan

    async def arrival(self, prompt: str, within: float = 30.0) -> float:
        with trio.fail_after(within):
            while prompt not in self.arrived:
                await self._event.wait()
        return self.arrived[prompt]


def node_config(name: str, model_url: str) -> dict[str, Any]:
    return {
        "models": {"default": {"provider": "openai", "baseUrl": model_url, "model": "fake"}},
        "cluster": {"backend": "postgres", "nodeId": name, "heartbeatSeconds": 0.5, "deadAfterSeconds": 2},
    }


async def one_turn(
    client: http.AsyncClient, node: GatewayProcess, fake: TimedFake, prompt: str
) -> tuple[float, str, dict[str, Any]]:
    body = {"agent": "main", "origin": {"channel": "console", "to": "bench"}, "prompt": prompt}
    t0 = time.perf_counter()
    r = await client.post(f"{node.base_url}/v1/sessions", json=body, headers=node.headers)
    assert r.status_code == 202, r.text
    started = await fake.arrival(prompt) - t0
    accepted = r.json()
    wait = f"{node.base_url}/v1/sessions/{accepted['sessionId']}/turns/{accepted['turnId']}/wait"
    outcome = (await client.post(wait, json={"timeoutSeconds": 30}, headers=node.headers)).json()
    return started, str(accepted["sessionId"]), outcome


async def run(turns: int, dsn: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"handoff": [], "reference": []}
    fake = TimedFake()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_model, fake)
        with temp_home("bench-handoff-a-") as home_a, temp_home("bench-handoff-b-") as home_b:
            write_config(home_a, node_config("a", url))
            write_config(home_b, node_config("b", url))
            env = {"TRIO_GATEWAY_PG_DSN": dsn}
            a, b = GatewayProcess(home_a, env=env), GatewayProcess(home_b, env=env)
            await trio.to_thread.run_sync(b.start, 60.0)
            await trio.to_thread.run_sync(a.start, 60.0)
            try:
                async with http.AsyncClient(timeout=30.0) as client:
                    _, sid, _ = await one_turn(client, b, fake, "hello")  # b owns the session
                    for i in range(-5, turns):  # 5 warm-up rounds, not counted
                        for kind, node in (("handoff", a), ("reference", b)):
                            prompt = f"{kind}-{i}"
                            started, other, outcome = await one_turn(client, node, fake, prompt)
                            assert other == sid, (other, sid)  # one conversation, one session
                            assert outcome == {"state": "done", "ok": True, "text": prompt}, outcome
                            if i >= 0:
                                out[kind].append(started)
            finally:
                await trio.to_thread.run_sync(a.stop)
                await trio.to_thread.run_sync(b.stop)
        nursery.cancel_scope.cancel()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=100)
    args = parser.parse_args()
    banner("bench_handoff", {"turns per kind": args.turns, "transport": "loopback"})
    server = PgServer.start()
    try:
        out = trio.run(run, args.turns, server.create_database("handoff"))
    finally:
        server.stop()
    ref = median(out["reference"])
    rows = []
    for kind, label in (("reference", "accepted on B, the owner (reference)"), ("handoff", "accepted on A, run on B")):
        values = out[kind]
        p50 = median(values)
        rows.append([label, len(values), p50 * 1000, percentile(values, 90) * 1000, (p50 - ref) * 1000])
    table(["turn", "n", "p50 ms", "p90 ms", "p50 over reference ms"], rows, title="Accepted → started on B")
    print(f"handoff p50 <= {TARGET_P50_SECONDS * 1000:g} ms: {verdict(median(out['handoff']) <= TARGET_P50_SECONDS)}")


if __name__ == "__main__":
    main()
