"""Model providers (issue 22), both in one run: what the gateway adds per call, how fast it reads
each provider's stream, and how soon a pings-only stream is cut.

    .venv/bin/python scripts/bench_models.py [--quick] [--turns 200]

1. Overhead. A real gateway process (`trio-gateway gateway start`, temp home) with two agents:
   `main` on an `openai` model, `claude` on an `anthropic` one, each the loopback fake of its
   provider served in this script (echo, streaming). One turn: `POST /v1/sessions` (a new
   session each) until its reply line is in `logs/console.jsonl` (so it includes the durable
   delivery queue). Reference, interleaved turn by turn: the same request sent straight to the
   same fake with the gateway's HTTP client library, read to the end.
2. Stream parsing, CPU only: a 4,000-token answer (one token a streamed event) as each fake
   sends it, through the client's own SSE reader and accumulator; events per CPU second
   (`time.process_time`, one thread). Target >= 20,000 events/s for both.
3. Stall: an in-process gateway (real clock) whose model's stream sends only keep-alives
   (Anthropic `ping` events, OpenAI `: keep-alive` comments) every 0.1 s; threshold 2 s, check
   interval 0.5 s; its fallback an OpenAI fake; medians of 3 runs. Measured: the submit to
   `[AUTO-ABORT]` minus the threshold (target <= one check interval), and the abort to the
   fallback's answer against one direct request to the fallback's fake on a fresh connection
   (target: the failover adds about one request, <= 1.5x).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import (
    GatewayProcess,
    banner,
    count_lines,
    percentile,
    poll_until,
    table,
    temp_home,
    verdict,
    write_config,
)

from trio_gateway import upstream as http
from trio_gateway.models import anthropic, build_model, openai
from trio_gateway.models.base import ModelReply
from trio_gateway.models.endpoint import parse_json, sse_data
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.fake_anthropic import ANTHROPIC, FakeAnthropic
from trio_gateway.sim.fake_model import OPENAI, FakeBehaviour, FakeModel, serve_fake_model
from trio_gateway.sim.runtime import Notice, build_gateway, quick_config

PROVIDERS = ("openai", "anthropic")


# --- 1. overhead ---------------------------------------------------------------------------------


def direct_request(provider: str, url: str) -> tuple[str, dict[str, Any]]:
    if provider == "openai":
        body = {"model": "fake", "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
        return url + "/chat/completions", body
    body = {"model": "fake", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hello there"}]}
    return anthropic.messages_url(url), body


async def overhead(turns: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f"{p}:{w}": [] for p in PROVIDERS for w in ("direct", "gateway")}
    async with trio.open_nursery() as nursery:
        urls = {
            "openai": await nursery.start(serve_fake_model, FakeModel()),
            "anthropic": await nursery.start(serve_fake_model, FakeAnthropic()),
        }
        config = {
            "models": {
                "gpt": {"provider": "openai", "baseUrl": urls["openai"], "model": "fake"},
                "claude": {"provider": "anthropic", "baseUrl": urls["anthropic"], "model": "fake", "maxTokens": 64},
            },
            "agents": {"main": {"model": "gpt"}, "claude": {"model": "claude"}},
        }
        agents = {"openai": "main", "anthropic": "claude"}
        with temp_home("bench-models-") as home:
            write_config(home, config)
            gp = GatewayProcess(home)
            await trio.to_thread.run_sync(gp.start, 60.0)
            try:
                console = home / "logs" / "console.jsonl"
                async with http.AsyncClient(timeout=30.0) as client, http.AsyncClient(timeout=30.0) as direct:
                    for i in range(-10, turns):  # 10 warm-up turns of each, not counted
                        for provider in PROVIDERS:
                            url, body = direct_request(provider, urls[provider])
                            t0 = time.perf_counter()
                            async with direct.stream("POST", url, json=body) as r:
                                async for _ in r.aiter_bytes():
                                    pass
                            t_direct = time.perf_counter() - t0
                            before = count_lines(console)
                            origin = {"channel": "console", "to": f"{provider}-{i}"}
                            session = {"agent": agents[provider], "origin": origin, "prompt": "hello there"}
                            t0 = time.perf_counter()
                            r2 = await client.post(f"{gp.base_url}/v1/sessions", json=session, headers=gp.headers)
                            assert r2.status_code == 202, r2.text
                            if not await poll_until(lambda b=before: count_lines(console) > b, 30, every=0.0005):
                                raise RuntimeError("no reply line in console.jsonl within 30 s")
                            t_turn = time.perf_counter() - t0
                            if i >= 0:
                                out[f"{provider}:direct"].append(t_direct)
                                out[f"{provider}:gateway"].append(t_turn)
                last = json.loads(console.read_text().splitlines()[-1])
                assert last.get("text") == "hello there", last
            finally:
                await trio.to_thread.run_sync(gp.stop)
        nursery.cancel_scope.cancel()
    return out


# --- 2. stream parsing ---------------------------------------------------------------------------


async def _parse(provider: str, lines: AsyncIterator[str]) -> ModelReply:
    if provider == "openai":
        acc = openai._StreamAccumulator()
        async for data in sse_data(lines):
            if data == "[DONE]":
                break
            acc.add(parse_json(data))
        return acc.reply()
    acc2 = anthropic.StreamAccumulator()
    async for data in sse_data(lines):
        acc2.add(parse_json(data))
    return acc2.reply()


async def parsing(tokens: int, rounds: int) -> dict[str, tuple[int, float]]:
    text = " ".join(f"w{i}" for i in range(tokens))
    reply = ModelReply(text)
    out = {}
    for provider, wire in (("openai", OPENAI), ("anthropic", ANTHROPIC)):
        pieces = wire.stream(reply, "fake")
        # Split the pre-built pieces into lines outside the timed part: aiter_lines does that.
        lines = [line for piece in pieces for line in piece.decode().split("\n")]

        async def feed(lines: list[str] = lines) -> AsyncIterator[str]:
            for line in lines:
                yield line

        best = float("inf")
        for _ in range(rounds):
            t0 = time.process_time()
            parsed = await _parse(provider, feed())
            best = min(best, time.process_time() - t0)
        assert parsed.text == text
        out[provider] = (len(pieces), best)
    return out


# --- 3. a pings-only stream ----------------------------------------------------------------------


async def one_request(url: str) -> float:
    """One OpenAI request to the fallback's fake on a fresh client (a fresh connection, as the
    fallback's first call makes): the latency a failover may add."""
    url, body = direct_request("openai", url)
    async with http.AsyncClient(timeout=30.0) as client:
        t0 = time.perf_counter()
        async with client.stream("POST", url, json=body) as r:
            async for _ in r.aiter_bytes():
                pass
        return time.perf_counter() - t0


async def stall(provider: str, threshold: float, interval: float) -> tuple[float, float, float]:
    """(threshold -> abort, abort -> answered by the fallback, one direct request) in seconds."""
    primary = FakeAnthropic() if provider == "anthropic" else FakeModel()
    primary.behaviour = FakeBehaviour(mode="pings", ping_interval_seconds=0.1)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_fake_model, primary)
        backup_url = await nursery.start(serve_fake_model, FakeModel())
        config = quick_config(
            **{
                "gateway.stalledTaskDetection.thresholdSeconds": threshold,
                "gateway.stalledTaskDetection.checkIntervalSeconds": interval,
                "models.backup": {"provider": "openai", "baseUrl": backup_url, "model": "fake"},
                "models.primary": {"provider": provider, "baseUrl": url, "model": "fake", "fallbacks": ["backup"]},
                "agents.main.model": "primary",
            }
        )
        notices: list[Notice] = []
        with tempfile.TemporaryDirectory(prefix="bench-models-stall-") as home:
            gateway, sink = build_gateway(Path(home), config, notices=notices)
            gateway.deps.model_factory = lambda mc: build_model(mc, {})
            await nursery.start(gateway.serve)
            t0 = trio.current_time()
            await gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt="hello")
            await gateway.busy.wait_value(0)
            assert [n.text for n in notices] == ["hello"], notices
            aborted_at = sink.tagged("AUTO-ABORT")[0].clock
            assert aborted_at is not None
            gateway.request_drain("stop")
        reference = sorted([await one_request(backup_url) for _ in range(5)])[2]
        nursery.cancel_scope.cancel()
    return aborted_at - t0 - threshold, notices[0].at - aborted_at, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30 turns")
    parser.add_argument("--turns", type=int, default=None, help="sequential turns per provider (default 200)")
    args = parser.parse_args()
    turns = args.turns or (30 if args.quick else 200)
    banner(
        "bench_models",
        {
            "turns": f"{turns} per provider, sequential, interleaved (+10 warm-up)",
            "gateway": "fresh `trio-gateway gateway start`, console channel, agents main (openai), claude (anthropic)",
            "models": f"the two fakes on 127.0.0.1 (this process), echo, streaming, {http.LIBRARY}",
        },
    )
    r = trio.run(overhead, turns)
    rows = []
    for provider in PROVIDERS:
        d, g = r[f"{provider}:direct"], r[f"{provider}:gateway"]
        rows.append(
            [f"{provider}: direct call to its fake", len(d), percentile(d, 50) * 1000, percentile(d, 99) * 1000]
        )
        rows.append(
            [f"{provider}: turn through the gateway", len(g), percentile(g, 50) * 1000, percentile(g, 99) * 1000]
        )
        added = [(percentile(g, q) - percentile(d, q)) * 1000 for q in (50, 99)]
        rows.append([f"{provider}: added by the gateway", "", *added])
    table(["what", "n", "p50 (ms)", "p99 (ms)"], rows, title="1. Latency per call")

    parsed = trio.run(parsing, 4000, 5)
    rows = []
    for provider, (events, cpu) in parsed.items():
        rate = events / cpu
        rows.append([provider, events, cpu * 1000, f"{rate:,.0f}", verdict(rate >= 20_000)])
    table(["provider", "events", "CPU (ms)", "events/s", ">= 20,000/s"], rows, title="2. Parsing a 4,000-token stream")

    threshold, interval = 2.0, 0.5
    rows = []
    for provider in PROVIDERS:
        runs = sorted(trio.run(stall, provider, threshold, interval) for _ in range(3))
        late, failover, reference = (sorted(r[i] for r in runs)[1] for i in range(3))  # medians of 3
        # Counted from the submit, not from the stream's last progress (its headers, a few ms
        # later): 0.1 s of slack for the turn to reach the model. The failover is one request
        # (on a fresh connection) plus the turn's own steps: within 1.5 direct requests.
        ok = late <= interval + 0.1 and failover <= 1.5 * reference
        rows.append([provider, threshold, interval, late * 1000, failover * 1000, reference * 1000, verdict(ok)])
    table(
        [
            "provider",
            "threshold (s)",
            "check (s)",
            "submit -> abort, minus threshold (ms)",
            "abort -> fallback's answer (ms)",
            "one direct request (ms)",
            "abort <= check, failover ~ 1 request",
        ],
        rows,
        title="3. A stream of keep-alives only, failing over",
    )


if __name__ == "__main__":
    main()
