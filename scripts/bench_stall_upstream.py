"""Measure what a stall abort costs upstream, on real loopback, for httpx and httpx2.

    .venv/bin/python scripts/bench_stall_upstream.py [--rounds 20] [--churn 0.5]

1. upstream-close latency: a streaming call stalled before headers / mid-stream is cancelled;
   the time until the fake server sees EOF (median and max of --rounds);
2. pool health after aborts with max_connections=10: 200 calls stalled in connect + 200 stalled
   before headers aborted at once, and --churn seconds of calls aborted at scattered moments;
   then how many of 10 slot-holding calls reach the server within 1 s (free capacity) and how
   many of 50 later calls succeed (pool timeout 0.5 s), with the time they took.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import random
import statistics
import time
from types import ModuleType
from typing import Any

import trio

from trio_gateway.testing import FakeBehaviour, FakeModel, serve_fake_model

BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def stream_call(client: Any, url: str, prompt: str = "hi") -> None:
    body = {**BODY, "messages": [{"role": "user", "content": prompt}]}
    async with client.stream("POST", url + "/chat/completions", json=body) as response:
        async for _ in response.aiter_bytes():
            pass


async def quiet_call(client: Any, url: str, prompt: str) -> None:
    with contextlib.suppress(Exception):  # a leaked pool answers PoolTimeout: counted, not raised
        await stream_call(client, url, prompt)


async def close_latency(lib: ModuleType, server: FakeModel, url: str, prompt: str, rounds: int) -> list[float]:
    latencies = []
    async with lib.AsyncClient(timeout=None) as client:
        for _ in range(rounds):
            before = server.received.value
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_call, client, url, prompt)
                await server.received.wait_value(lambda n, b=before: n > b)
                await trio.sleep(0.02)
                cancelled_at = trio.current_time()
                nursery.cancel_scope.cancel()
            with trio.fail_after(2):
                await server.open_connections.wait_value(0)
            latencies.append(server.closed_at[-1] - cancelled_at)
    return latencies


async def capacity(client: Any, server: FakeModel, url: str) -> tuple[int, int, float]:
    server.behaviour = FakeBehaviour(mode="stall")
    before = server.received.value
    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(quiet_call, client, url, "/stall")
        with trio.move_on_after(1):
            await server.received.wait_value(lambda n: n >= before + 10)
        nursery.cancel_scope.cancel()
    held = server.received.value - before
    server.behaviour = FakeBehaviour(mode="echo")
    ok = 0
    started = time.perf_counter()

    async def post() -> None:
        nonlocal ok
        with contextlib.suppress(Exception):
            response = await client.post(url + "/chat/completions", json={**BODY, "stream": False})
            ok += response.status_code == 200

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(post)
    return held, ok, time.perf_counter() - started


async def at_once(lib: ModuleType, server: FakeModel, url: str, dead: str) -> tuple[int, int, float]:
    server.behaviour = FakeBehaviour(mode="stall")
    async with lib.AsyncClient(limits=lib.Limits(max_connections=10), timeout=lib.Timeout(None, pool=0.5)) as c:
        with trio.move_on_after(0.3):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(stream_call, c, dead)
                    nursery.start_soon(stream_call, c, url)
        return await capacity(c, server, url)


async def scattered(lib: ModuleType, server: FakeModel, url: str, dead: str, seconds: float) -> tuple[int, int, float]:
    server.behaviour = FakeBehaviour(mode="delay", delay_seconds=0.005)
    rng = random.Random(1093)

    async def churn(client: Any, target: str) -> None:
        end = trio.current_time() + seconds
        while trio.current_time() < end:
            with trio.move_on_after(rng.uniform(0, 0.02)), contextlib.suppress(lib.HTTPError):
                await stream_call(client, target)

    async with lib.AsyncClient(limits=lib.Limits(max_connections=10), timeout=lib.Timeout(None, pool=0.5)) as c:
        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(churn, c, url)
            for _ in range(5):
                nursery.start_soon(churn, c, dead)
        return await capacity(c, server, url)


async def main(args: argparse.Namespace) -> None:
    dead_sock = trio.socket.socket()
    await dead_sock.bind(("127.0.0.1", 0))
    dead_sock.listen(0)  # never accepts: connects beyond the backlog stall
    dead = f"http://127.0.0.1:{dead_sock.getsockname()[1]}/v1"
    for name in ("httpx", "httpx2"):
        lib = importlib.import_module(name)
        server = FakeModel(FakeBehaviour(mode="stall"))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_model, server)
            for label, prompt in (("before headers", "/stall x"), ("mid-stream", "/stall-after 2 a b c")):
                ms = [x * 1000 for x in await close_latency(lib, server, url, prompt, args.rounds)]
                print(f"{name:6} close latency {label:14}: median {statistics.median(ms):.3f} ms, max {max(ms):.3f} ms")
            for label, run in (("at once", at_once(lib, server, url, dead)),
                               ("scattered", scattered(lib, server, url, dead, args.churn))):  # fmt: skip
                held, ok, took = await run
                print(f"{name:6} after aborts {label:9}: capacity {held}/10, later calls ok {ok}/50 in {took:.3f} s")
            nursery.cancel_scope.cancel()
    dead_sock.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--churn", type=float, default=0.5)
    trio.run(main, parser.parse_args())
