"""Soak: many turns at high concurrency through a real gateway process, with a restart or a
SIGKILL in the middle. Nothing accepted may be lost, nothing replied twice.

    .venv/bin/python scripts/soak_turns.py [--quick] [--turns 2000] [--concurrency 50]
                                           [--modes plain,restart,sigkill]

A real gateway process (`trio-gateway gateway start --port 0` on a temporary home) whose model
is the loopback fake model server (`testing.fake_model`, run in this script, echo, streaming).
Clients `POST /v1/sessions` at the given concurrency over 100 origins (so turns also queue
behind each other in a session). Halfway through the submissions:

- `restart`: `POST /v1/gateway/restart` (drain 5 s), while the clients keep submitting;
- `sigkill`: the process is killed with SIGKILL and started again on the same home.

A submission that is refused (503 draining, 507, connection refused while the process is
down) is retried by its client until it is accepted: only a 202 makes a turn accepted. Then
the script waits until every accepted turn's reply is in `logs/console.jsonl` (replies carry
the turn id as their idempotency key), or 180 s pass.

Reports per mode: accepted, replied, missing (accepted, never replied), duplicates (turns with
more than one reply line), and p50 / p99 of the 202 (POST to answer). The reference is the
`plain` mode in the same run: the same load with no fault.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from _bench_common import GatewayProcess, banner, percentile, table, temp_home, write_config

from trio_gateway import upstream as http
from trio_gateway.sim.fake_model import FakeModel, serve_fake_model

ORIGINS = 100
REPLY_WAIT_SECONDS = 180.0


class Soak:
    def __init__(self, home: Path, mode: str, turns: int, concurrency: int) -> None:
        self.home = home
        self.mode = mode
        self.turns = turns
        self.concurrency = concurrency
        self.gp = GatewayProcess(home)
        self.accepted: list[str] = []
        self.latencies: list[float] = []
        self.refused = 0
        self.submitted = 0
        self.fault_done = trio.Event()

    async def submit_one(self, client: http.AsyncClient, i: int) -> None:
        body = {"agent": "main", "origin": {"channel": "console", "to": f"user-{i % ORIGINS}"}, "prompt": f"t{i}"}
        while True:
            started = time.perf_counter()
            try:
                r = await client.post(f"{self.gp.base_url}/v1/sessions", json=body, headers=self.gp.headers)
            except http.HTTPError:
                r = None  # the process is down (SIGKILL) or restarting its listener
            if r is not None and r.status_code == 202:
                self.latencies.append(time.perf_counter() - started)
                self.accepted.append(r.json()["turnId"])
                return
            self.refused += 1
            await trio.sleep(0.05)

    async def clients(self) -> None:
        limiter = trio.Semaphore(self.concurrency)
        limits = http.Limits(max_connections=self.concurrency + 10)
        async with http.AsyncClient(timeout=60.0, limits=limits) as client, trio.open_nursery() as nursery:
            for i in range(self.turns):
                await limiter.acquire()
                self.submitted += 1
                if i == self.turns // 2:
                    nursery.start_soon(self.fault)
                nursery.start_soon(self._one, client, i, limiter)

    async def _one(self, client: http.AsyncClient, i: int, limiter: trio.Semaphore) -> None:
        try:
            await self.submit_one(client, i)
        finally:
            limiter.release()

    async def fault(self) -> None:
        if self.mode == "restart":
            async with http.AsyncClient(timeout=60.0) as client:
                url = f"{self.gp.base_url}/v1/gateway/restart"
                r = await client.post(url, json={"timeoutSeconds": 5}, headers=self.gp.headers)
                assert r.status_code in (200, 202), r.text
                await self._wait_generation(2)
        elif self.mode == "sigkill":
            assert self.gp.proc is not None
            os.kill(self.gp.pid, signal.SIGKILL)  # our own child, by its id
            await trio.to_thread.run_sync(self.gp.proc.wait)
            port = self.gp.port
            self.gp = GatewayProcess(self.home, extra_args=[])
            await trio.to_thread.run_sync(self.gp.start, 60.0)
            assert self.gp.port is not None
            assert port is not None
        self.fault_done.set()

    async def _wait_generation(self, generation: int) -> None:
        async with http.AsyncClient(timeout=5.0) as client:
            while True:
                try:
                    r = await client.get(f"{self.gp.base_url}/healthz")
                    if r.status_code == 200 and r.json().get("generation", 0) >= generation:
                        return
                except http.HTTPError:
                    pass
                await trio.sleep(0.05)

    def replies(self) -> Counter[str]:
        try:
            lines = (self.home / "logs" / "console.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return Counter()
        keys: Counter[str] = Counter()
        for line in lines:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                keys[json.loads(line)["idempotencyKey"]] += 1
        return keys

    async def wait_replies(self) -> Counter[str]:
        deadline = trio.current_time() + REPLY_WAIT_SECONDS
        while True:
            keys = self.replies()
            if set(self.accepted) <= set(keys) or trio.current_time() > deadline:
                return keys
            await trio.sleep(0.2)


async def run_mode(mode: str, turns: int, concurrency: int, model_url: str) -> dict[str, Any]:
    with temp_home(f"soak-{mode}-") as home:
        write_config(
            home,
            {
                "models": {"default": {"model": "fake", "stream": True, "baseUrl": model_url}},
                "gateway": {"drain": {"timeoutSeconds": 5}},
            },
        )
        soak = Soak(home, mode, turns, concurrency)
        await trio.to_thread.run_sync(soak.gp.start, 60.0)
        t0 = time.perf_counter()
        try:
            await soak.clients()
            keys = await soak.wait_replies()
        finally:
            await trio.to_thread.run_sync(soak.gp.stop)
        took = time.perf_counter() - t0
        replied = [t for t in soak.accepted if keys.get(t, 0) >= 1]
        return {
            "mode": mode,
            "accepted": len(soak.accepted),
            "replied": len(replied),
            "missing": len(soak.accepted) - len(replied),
            "duplicates": sum(1 for t in soak.accepted if keys.get(t, 0) > 1),
            "refused then retried": soak.refused,
            "p50 202": f"{percentile(soak.latencies, 50) * 1000:.1f} ms",
            "p99 202": f"{percentile(soak.latencies, 99) * 1000:.1f} ms",
            "wall": f"{took:.1f} s",
        }


async def main(args: argparse.Namespace) -> int:
    fake = FakeModel()
    results = []
    async with trio.open_nursery() as nursery:
        model_url = await nursery.start(serve_fake_model, fake)
        for mode in args.modes.split(","):
            results.append(await run_mode(mode, args.turns, args.concurrency, model_url))
            print(f"{mode}: done", flush=True)
        nursery.cancel_scope.cancel()
    headers = list(results[0])
    table(headers, [[r[h] for h in headers] for r in results], title="soak: accepted vs replied")
    lost = sum(r["missing"] for r in results)
    dups = sum(r["duplicates"] for r in results)
    print(f"verdict: {'met' if lost == 0 and dups == 0 else 'MISSED'} (lost {lost}, duplicates {dups})")
    return 0 if lost == 0 and dups == 0 else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 turns at concurrency 10")
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--modes", default="plain,restart,sigkill")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.concurrency = 200, 10
    return args


if __name__ == "__main__":
    arguments = parse_args()
    banner("soak_turns", {"turns": arguments.turns, "concurrency": arguments.concurrency, "modes": arguments.modes})
    sys.exit(trio.run(main, arguments))
