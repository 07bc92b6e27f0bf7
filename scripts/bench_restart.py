"""Restart under load: a real gateway process with N sessions each stuck in a model call.

    .venv/bin/python scripts/bench_restart.py [--quick] [--sizes 1,100,1000,10000] [--timeout 2]

For each N: a fresh `trio-gateway gateway start` on a temporary home whose default model is the
loopback fake model server (`testing.fake_model`, run inside this script so its open-connection
count can be read) in mode `/stall`: it never answers. N sessions are started over
`POST /v1/sessions`; once they are all stuck, `POST /v1/gateway/restart` with `"wait": true`
answers when generation 2 accepts work, and `/healthz` confirms it.

Figures per N, drained (`gateway.drain.timeoutSeconds` = T) and forced (`force: true`), each on
its own fresh process:
- overhead = wall time from the request to generation 2 accepting work, minus T (forced: minus 0);
- upstream connections still open at the fake model right after, and 1 s later (target 0);
- RSS per stalled session, from /proc/<pid>/status (VmRSS stuck minus VmRSS idle, over N).

Reference in the same run: an idle gateway's restart time (same config, no sessions).
Stall detection is set far away (threshold 3600 s) so only the drain acts. resumeInterrupted is
on (the default; `--no-resume` turns it off): just before the restart the fake switches to
answering, so generation 2's resumed calls finish, and "connections not closed" counts the
stalled generation-1 connections whose close the fake has not seen.
Targets: overhead < 0.5 s at every N, drained and forced; 0 upstream connections left.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, gateway_on_fake_model, poll_until, rss_mb, table, verdict

from trio_gateway import upstream as http
from trio_gateway.sim.fake_model import FakeModel


def gateway_config(model_url: str, drain_timeout: float, resume: bool) -> dict[str, Any]:
    return {
        "gateway": {
            "drain": {"timeoutSeconds": drain_timeout, "resumeInterrupted": resume},
            "stalledTaskDetection": {"thresholdSeconds": 3600},
            "testEndpoints": {"enabled": True},
        },
        "models": {"default": {"baseUrl": model_url, "model": "fake", "stream": True, "requestTimeoutSeconds": 3600}},
    }


async def start_sessions(client: Any, gp: GatewayProcess, n: int, parallel: int = 16) -> float:
    t0 = time.perf_counter()
    limiter = trio.Semaphore(parallel)
    failures: list[str] = []

    async def one(i: int) -> None:
        async with limiter:
            body = {"agent": "main", "origin": {"channel": "console", "to": f"user-{i}"}, "prompt": "hello"}
            r = await client.post(f"{gp.base_url}/v1/sessions", json=body, headers=gp.headers)
            if r.status_code != 202:
                failures.append(f"{r.status_code} {r.text[:200]}")

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    if failures:
        raise RuntimeError(f"{len(failures)} session starts failed, e.g. {failures[0]}")
    return time.perf_counter() - t0


async def model_calls_in_flight(client: Any, gp: GatewayProcess) -> int:
    r = await client.get(f"{gp.base_url}/v1/status", headers=gp.headers, timeout=60)
    return sum(1 for w in r.json().get("work", []) if w.get("kind") == "model_call")


async def one_cell(n: int, force: bool, drain_timeout: float, resume: bool) -> dict[str, Any]:
    fake = FakeModel()
    fake.behaviour.mode = "stall"
    out: dict[str, Any] = {"n": n, "force": force}
    async with gateway_on_fake_model(fake, lambda url: gateway_config(url, drain_timeout, resume)) as gp:
        limits = http.Limits(max_connections=32, max_keepalive_connections=32)
        async with http.AsyncClient(timeout=120.0, limits=limits) as client:
            await trio.sleep(0.3)
            out["rss_idle_mb"] = rss_mb(gp.pid)
            if n:
                out["start_s"] = await start_sessions(client, gp, n)
                await poll_until(lambda: fake.open_connections.value >= min(n, 100), 120)
                with trio.move_on_after(120):
                    for _ in range(600):  # until every session's call is in flight
                        if await model_calls_in_flight(client, gp) >= n:
                            break
                        await trio.sleep(0.2)
                await trio.sleep(0.3)
            out["in_flight"] = await model_calls_in_flight(client, gp) if n else 0
            out["upstream_before"] = fake.open_connections.value
            out["rss_stuck_mb"] = rss_mb(gp.pid)
            body = {"force": force, "wait": True}
            # Calls made from now on (resumed turns of generation 2) are answered: only the
            # stalled calls of generation 1 stay stuck, and their closes are counted below.
            fake.behaviour.mode = "echo"
            closed_before = len(fake.closed_at)
            t0 = time.perf_counter()
            r = await client.post(f"{gp.base_url}/v1/gateway/restart", json=body, headers=gp.headers)
            t_answer = time.perf_counter() - t0
            h = await client.get(f"{gp.base_url}/healthz")
            t_health = time.perf_counter() - t0
            out["restart_status"] = r.status_code
            out["health"] = h.json()
            out["wall_s"] = t_answer
            out["health_s"] = t_health
            out["upstream_after"] = max(0, out["upstream_before"] - (len(fake.closed_at) - closed_before))
            await trio.sleep(1.0)
            out["upstream_after_1s"] = max(0, out["upstream_before"] - (len(fake.closed_at) - closed_before))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 1, 100")
    parser.add_argument("--sizes", default=None, help="session counts (default 1,100,1000,10000)")
    parser.add_argument("--timeout", type=float, default=2.0, help="gateway.drain.timeoutSeconds T (default 2)")
    parser.add_argument(
        "--no-resume",
        action="store_true",
        help="resumeInterrupted off: every cut turn enqueues its 'interrupted' notice inside the drain",
    )
    args = parser.parse_args()
    sizes = [int(x) for x in (args.sizes or ("1,100" if args.quick else "1,100,1000,10000")).split(",")]
    banner(
        "bench_restart",
        {
            "stalled sessions N": sizes,
            "drain timeoutSeconds T": args.timeout,
            "gateway model client": http.LIBRARY,
            "upstream": "testing.fake_model on 127.0.0.1 (in this process), mode stall",
            "process": "fresh `trio-gateway gateway start` per cell",
            "resumeInterrupted": not args.no_resume,
        },
    )
    T = args.timeout
    idle = trio.run(one_cell, 0, False, T, not args.no_resume)
    idle_forced = trio.run(one_cell, 0, True, T, not args.no_resume)
    print(f"  idle reference: restart {idle['wall_s']:.3f}s, forced {idle_forced['wall_s']:.3f}s", flush=True)
    rows = [
        ["0 (idle)", "drained", idle["wall_s"], "", "", idle["upstream_after"], idle["upstream_after_1s"], "", ""],
        ["0 (idle)", "forced", idle_forced["wall_s"], "", "", idle_forced["upstream_after"], "", "", ""],
    ]
    ok = True
    for n in sizes:
        for force in (False, True):
            r = trio.run(one_cell, n, force, T, not args.no_resume)
            overhead = r["wall_s"] - (0.0 if force else T)
            met = overhead < 0.5 and r["upstream_after_1s"] == 0 and r["health"].get("generation") == 2
            ok = ok and met
            per_session_kb = (r["rss_stuck_mb"] - r["rss_idle_mb"]) * 1024 / n
            rows.append(
                [
                    n,
                    "forced" if force else f"drained T={T:g}",
                    r["wall_s"],
                    overhead,
                    f"{r['in_flight']}/{r['upstream_before']}",
                    r["upstream_after"],
                    r["upstream_after_1s"],
                    per_session_kb,
                    verdict(met),
                ]
            )
            print(f"  N={n} {'forced' if force else 'drained'}: {r['wall_s']:.3f}s", flush=True)
    print()
    table(
        [
            "N",
            "restart",
            "request->gen 2 (s)",
            "overhead (s)",
            "calls/upstream conns before",
            "gen-1 conns not closed",
            "conns +1s",
            "RSS/session (kB)",
            "target",
        ],
        rows,
        title="Restart with N stalled model calls (overhead = wall - T; forced: wall)",
    )
    print("all targets met" if ok else "SOME TARGETS MISSED (see the table)")


if __name__ == "__main__":
    main()
