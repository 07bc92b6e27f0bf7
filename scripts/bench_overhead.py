"""Latency the gateway adds per turn, against calling the same fake model directly (same run).

    .venv/bin/python scripts/bench_overhead.py [--quick] [--turns 200]

A real gateway process (`trio-gateway gateway start` on a temporary home) whose default model is
the loopback fake model server (`testing.fake_model`, run inside this script, echo mode,
streaming). One turn: `POST /v1/sessions` (a new session each, so history does not grow) until
its reply line appears in `<home>/logs/console.jsonl` (the console channel: the reply went
through the durable delivery queue, so the turn includes enqueue + fsync + send + ack).
Split: request -> the fake model sees the call (intake), and the rest (model + delivery).

Reference, interleaved turn by turn: the same chat-completions request made directly with the
gateway's HTTP client library on a warm client. Sequential turns, default 200.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, count_lines, gateway_on_fake_model, percentile, poll_until, table

from trio_gateway import upstream as http
from trio_gateway.sim.fake_model import FakeModel

SEEN_AT: list[float] = []


class TimedFake(FakeModel):
    """The fake model, noting the instant each request has been read."""

    def record(self, *args: Any) -> Any:
        SEEN_AT.append(time.perf_counter())
        return super().record(*args)


async def run(turns: int) -> dict[str, list[float]]:
    fake = TimedFake()
    seen_at = SEEN_AT
    out: dict[str, list[float]] = {"gateway": [], "intake": [], "direct": []}
    config: dict[str, Any] = {"models": {"default": {"model": "fake", "stream": True}}}

    def config_for(url: str) -> dict[str, Any]:
        config["models"]["default"]["baseUrl"] = url
        return config

    async with gateway_on_fake_model(fake, config_for) as gp:
        model_url = gp.model_url
        console = gp.home / "logs" / "console.jsonl"
        async with http.AsyncClient(timeout=30.0) as client, http.AsyncClient(timeout=30.0) as direct:
            body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
            for i in range(-10, turns):  # 10 warm-up turns of each, not counted
                # Direct reference.
                t0 = time.perf_counter()
                async with direct.stream("POST", model_url + "/chat/completions", json=body) as r:
                    async for _ in r.aiter_bytes():
                        pass
                t_direct = time.perf_counter() - t0
                # Through the gateway.
                before = count_lines(console)
                n_seen = len(seen_at)
                session = {"agent": "main", "origin": {"channel": "console", "to": f"u{i}"}, "prompt": "hello"}
                t0 = time.perf_counter()
                r2 = await client.post(f"{gp.base_url}/v1/sessions", json=session, headers=gp.headers)
                assert r2.status_code == 202, r2.text
                if not await poll_until(lambda before=before: count_lines(console) > before, 30, every=0.0005):
                    raise RuntimeError("no reply line in console.jsonl within 30 s")
                t_turn = time.perf_counter() - t0
                if i >= 0:
                    out["direct"].append(t_direct)
                    out["gateway"].append(t_turn)
                    if len(seen_at) > n_seen:
                        out["intake"].append(seen_at[n_seen] - t0)
        last = json.loads(console.read_text().splitlines()[-1])
        assert "hello" in last.get("text", ""), f"unexpected reply line: {last}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 turns")
    parser.add_argument("--turns", type=int, default=None, help="sequential turns (default 200)")
    args = parser.parse_args()
    turns = args.turns or (30 if args.quick else 200)
    banner(
        "bench_overhead",
        {
            "turns": f"{turns} sequential (+10 warm-up)",
            "gateway": "fresh `trio-gateway gateway start`, console channel",
            "model": f"testing.fake_model on 127.0.0.1 (this process), echo, streaming; client {http.LIBRARY}",
        },
    )
    r = trio.run(run, turns)
    rows = []
    for name, label in (
        ("direct", "direct call to the fake model"),
        ("gateway", "turn through the gateway (POST -> reply delivered)"),
        ("intake", "  of which: POST -> model sees the call"),
    ):
        v = r[name]
        rows.append([label, len(v), percentile(v, 50) * 1000, percentile(v, 99) * 1000])
    added50 = (percentile(r["gateway"], 50) - percentile(r["direct"], 50)) * 1000
    added99 = (percentile(r["gateway"], 99) - percentile(r["direct"], 99)) * 1000
    rows.append(["added by the gateway (gateway - direct)", "", added50, added99])
    table(["what", "n", "p50 (ms)", "p99 (ms)"], rows, title="Latency per turn")


if __name__ == "__main__":
    main()
