"""Stall detection latency: from the threshold to `[AUTO-ABORT]`, and from the abort to the
upstream seeing EOF, with 1 and 1,000 concurrent stalled model calls, while sessions whose
streams move slowly (but move) must never be aborted.

    .venv/bin/python scripts/bench_stall.py [--quick] [--counts 1,1000] [--threshold 2] [--interval 0.5]
        [--provider openai|anthropic] [--stall stall|pings]

`--provider` picks the model client and its fake (both speak the same behaviours); `--stall
pings` makes the stalled calls' streams send keep-alives only (Anthropic `ping` events, OpenAI
`: keep-alive` comments, one a second) instead of nothing: the watchdog must judge them the same.

An in-process gateway (`testing.runtime.build_gateway`, real clock) whose model is the real
client of `--provider` against its real loopback fake server
(`sim.fake_model.serve_fake_model`), in the same trio run, so the server's close times and
the gateway's log events are on one clock. Stalled calls send `/stall` (no headers ever); slow
sessions send `/slow S` with a long answer (one word per chunk every S seconds, S well under
the threshold, lasting several thresholds).

Reference in the same run: the same number of stalled requests made directly with the same
HTTP client library, cancelled all at once with one cancel scope: the floor for EOF latency.

Targets: threshold -> AUTO-ABORT within one check interval; abort -> upstream EOF < 50 ms;
0 slow sessions aborted.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, percentile, poll_until, table, verdict

from trio_gateway import upstream as http
from trio_gateway.models import build_model
from trio_gateway.models.anthropic import messages_url
from trio_gateway.policy.config import ModelConfig
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.fake_anthropic import FakeAnthropic
from trio_gateway.sim.fake_model import FakeModel, serve_fake_model
from trio_gateway.sim.runtime import build_gateway, quick_config

SLOW_WORDS = 40


def new_fake(provider: str) -> FakeModel:
    return FakeAnthropic() if provider == "anthropic" else FakeModel()


async def gateway_case(
    n_stalled: int, n_slow: int, threshold: float, interval: float, slow_every: float, provider: str, stall: str
) -> dict:
    fake = new_fake(provider)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve_fake_model, fake)
        model_cfg = ModelConfig(
            provider=provider, base_url=base_url, model="fake", stream=True, request_timeout_seconds=600.0
        )
        config = quick_config(
            **{
                "gateway.stalledTaskDetection.thresholdSeconds": threshold,
                "gateway.stalledTaskDetection.checkIntervalSeconds": interval,
                "models.default": {"provider": provider, "baseUrl": base_url, "model": "fake", "stream": True},
            }
        )
        model = build_model(model_cfg, {})
        with tempfile.TemporaryDirectory(prefix="bench-stall-") as home:
            gateway, sink = build_gateway(Path(home), config, model=model)
            await nursery.start(gateway.serve)
            # Track every model_call's last progress instant (the threshold counts from it).
            last_progress: dict[str, float] = {}
            opened_before = fake.open_connections.value

            async def watch() -> None:
                while True:
                    for unit in gateway.registry.units():
                        if unit.kind == "model_call" and unit.session_id and not unit.stall_reported:
                            last_progress[unit.session_id] = unit.last_progress_at
                    await trio.sleep(0.002)

            nursery.start_soon(watch)
            slow_text = " ".join(f"w{i}" for i in range(SLOW_WORDS))
            stalled_ids, slow_ids = [], []
            for i in range(n_slow):
                origin = Origin("console", f"slow-{i}", None)
                prompt = f"/slow {slow_every} {slow_text}"
                sid, _ = await gateway.submit(agent_id="main", origin=origin, prompt=prompt)
                slow_ids.append(sid)
            t_submit = trio.current_time()
            for i in range(n_stalled):
                origin = Origin("console", f"stall-{i}", None)
                sid, _ = await gateway.submit(agent_id="main", origin=origin, prompt=f"/{stall}")
                stalled_ids.append(sid)
            t_submitted = trio.current_time()
            connected = await poll_until(lambda: fake.open_connections.value >= opened_before + min(n_stalled, 100), 30)
            peak_connections = fake.open_connections.value
            await poll_until(lambda: len(sink.tagged("AUTO-ABORT")) >= n_stalled, threshold * 3 + 60)
            # Let the slow streams run to the end: any abort among them would show up.
            await poll_until(lambda: gateway.busy.value == 0, SLOW_WORDS * slow_every + threshold * 2 + 30)
            await poll_until(lambda: fake.open_connections.value <= 0, 5)
            aborts = sink.tagged("AUTO-ABORT")
            stalled_set, slow_set = set(stalled_ids), set(slow_ids)

            def session_of(event: Any) -> str:
                return str(event.fields.get("session", ""))  # `Aborting stalled model_call in session=ID`

            detect = []
            abort_times = []
            for event in aborts:
                sid = session_of(event)
                if sid in stalled_set and sid in last_progress and event.clock is not None:
                    detect.append(event.clock - (last_progress[sid] + threshold))
                    abort_times.append(event.clock)
            slow_aborted = sum(1 for e in aborts if session_of(e) in slow_set)
            # Close times are not keyed by session: each close in the window counts from the latest
            # abort before it (aborts come in batches, one per watchdog check). The window ends
            # 2 s after the last abort, long before the slow streams end, so their closes are out.
            abort_times.sort()
            t_end = abort_times[-1] + 2.0 if abort_times else 0.0
            closes = sorted(c for c in fake.closed_at if abort_times and abort_times[0] - 0.001 <= c < t_end)
            eof = [c - max(a for a in abort_times if a <= c + 0.001) for c in closes]
            closes_after = closes
            result = {
                "n": n_stalled,
                "slow": n_slow,
                "submit_s": t_submitted - t_submit,
                "connected": connected,
                "peak_upstream_conns": peak_connections,
                "aborted": len(detect),
                "detect": detect,
                "eof": eof,
                "eof_closes": len(closes_after),
                "slow_aborted": slow_aborted,
                "left_open": fake.open_connections.value,
            }
            gateway.request_drain("stop", timeout=5)
            await model.aclose()
        nursery.cancel_scope.cancel()
    return result


async def direct_case(n: int, provider: str, stall: str) -> dict:
    """Reference: n direct stalled requests with the same client library, one cancel for all."""
    fake = new_fake(provider)
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve_fake_model, fake)
        limits = http.Limits(max_connections=None, max_keepalive_connections=None)
        async with http.AsyncClient(timeout=600.0, limits=limits) as client:

            async def one() -> None:
                ask = [{"role": "user", "content": f"/{stall}"}]
                body = {"model": "fake", "max_tokens": 64, "stream": True, "messages": ask}
                url = messages_url(base_url) if provider == "anthropic" else base_url + "/chat/completions"
                await client.post(url, json=body)

            async with trio.open_nursery() as calls:
                for _ in range(n):
                    calls.start_soon(one)
                await poll_until(lambda: fake.open_connections.value >= n, 60)
                t_cancel = trio.current_time()
                calls.cancel_scope.cancel()
            await poll_until(lambda: fake.open_connections.value <= 0, 5)
        eof = [c - t_cancel for c in fake.closed_at if c >= t_cancel]
        nursery.cancel_scope.cancel()
    return {"n": n, "eof": eof, "left_open": fake.open_connections.value}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 100 stalled calls, 5 slow sessions")
    parser.add_argument("--counts", default=None, help="stalled call counts (default 1,1000)")
    parser.add_argument("--slow", type=int, default=None, help="slow (progressing) sessions per case (default 20)")
    parser.add_argument("--threshold", type=float, default=2.0, help="thresholdSeconds (default 2)")
    parser.add_argument("--interval", type=float, default=0.5, help="checkIntervalSeconds (default 0.5)")
    parser.add_argument("--provider", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--stall", choices=("stall", "pings"), default="stall", help="silent, or keep-alives only")
    args = parser.parse_args()
    counts = [int(x) for x in (args.counts or ("1,100" if args.quick else "1,1000")).split(",")]
    n_slow = args.slow if args.slow is not None else (5 if args.quick else 20)
    slow_every = args.threshold / 4
    banner(
        "bench_stall",
        {
            "stalled calls": counts,
            "slow sessions": f"{n_slow} ({SLOW_WORDS} chunks, one every {slow_every:g}s)",
            "thresholdSeconds": args.threshold,
            "checkIntervalSeconds": args.interval,
            "model client": f"{args.provider} over {http.LIBRARY}",
            "upstream": f"its fake on 127.0.0.1, same process; stalled calls send /{args.stall}",
        },
    )
    rows, ref_rows = [], []
    ok = True
    for n in counts:
        t0 = time.perf_counter()
        r = trio.run(gateway_case, n, n_slow, args.threshold, args.interval, slow_every, args.provider, args.stall)
        ref = trio.run(direct_case, n, args.provider, args.stall)
        d, e = r["detect"], r["eof"]
        det_ok = bool(d) and max(d) <= args.interval + 0.05 and r["aborted"] == n
        eof_ok = bool(e) and percentile(e, 100) < 0.050
        ok = ok and det_ok and eof_ok and r["slow_aborted"] == 0 and r["left_open"] == 0
        rows.append(
            [
                n,
                f"{r['aborted']}/{n}",
                percentile(d, 50) * 1000,
                percentile(d, 100) * 1000,
                verdict(det_ok),
                r["peak_upstream_conns"],
                r["eof_closes"],
                percentile(e, 50) * 1000,
                percentile(e, 100) * 1000,
                verdict(eof_ok),
                f"{r['slow_aborted']}/{r['slow']}",
                r["left_open"],
            ]
        )
        ref_rows.append([n, len(ref["eof"]), percentile(ref["eof"], 50) * 1000, percentile(ref["eof"], 100) * 1000])
        print(f"  {n} stalled: done in {time.perf_counter() - t0:.1f}s", flush=True)
    print()
    table(
        [
            "stalled",
            "aborted",
            "thr->abort p50 (ms)",
            "thr->abort max (ms)",
            f"<= interval {args.interval:g}s",
            "upstream conns at peak",
            "EOFs seen",
            "abort->EOF p50 (ms)",
            "abort->EOF max (ms)",
            "< 50 ms",
            "slow aborted",
            "conns left",
        ],
        rows,
        title="Gateway: stall detection and upstream release",
    )
    table(
        ["requests", "EOFs seen", "cancel->EOF p50 (ms)", "cancel->EOF max (ms)"],
        ref_rows,
        title="Reference (same run): direct requests, one cancel scope, no gateway",
    )
    print("all targets met" if ok else "SOME TARGETS MISSED (see the table)")


if __name__ == "__main__":
    main()
