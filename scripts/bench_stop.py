"""`/stop` (SPEC 15, issue 20): how fast a heard `/stop` closes the stalled model call's upstream
connection, and how fast its `Stopped.` is durable in the delivery queue.

    .venv/bin/python scripts/bench_stop.py [--rounds 30] [--quick]

One process, real clock, real disk (sessions and queue fsynced in threads, as in production),
real loopback: the fake model server (`sim.fake_model`, `/stall` holds the request before its
headers) and the production OpenAI client in the same trio run, so both sides' instants are read
on one clock. Each round: a message `/stall ...` is heard (through `channels/heard.submit_heard`,
the listener's and the webhook's one intake step) and its model call reaches the upstream; then

(a) `/stop` heard -> the upstream sees its connection closed (EOF). Target p50 <= 50 ms.
    Reference, same run, rounds interleaved: the operator's `session abort` of the same kind of
    turn (the cancel without the command's path).
(b) `/stop` heard -> `submit_heard` returns: the stopped turns are saved and `Stopped.` is in the
    queue, fsynced (intake returns only then). Target p50 <= 100 ms. Reference, same run: an
    ordinary message heard -> durable turn (one fsynced session write), and one raw enqueue.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, percentile, table, verdict

from trio_gateway.app.assemble import queue_delivery
from trio_gateway.channels.heard import HeardOn, submit_heard
from trio_gateway.channels.inbound import Heard
from trio_gateway.log import EventLog
from trio_gateway.models.registry import build_model
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_model import FakeModel, serve_fake_model
from trio_gateway.sim.runtime import gateway_deps, quick_config
from trio_gateway.storage.atomic import in_thread
from trio_gateway.storage.home import Home

ON = HeardOn("console", "bench", "main", None)


async def stalled_turn(gateway: Gateway, fake: FakeModel, to: str, n: int) -> str:
    """A `/stall` message heard; returns its session once its model call is upstream."""
    before = fake.received.value
    accepted = await submit_heard(gateway.submit_inbound, ON, Heard(f"{to}-{n}", to, f"/stall round {n}"))
    assert accepted is not None
    with trio.fail_after(10):
        await fake.received.wait_value(lambda v: v > before)
    await trio.sleep(0.02)  # the request is fully in: the server is holding it
    return accepted[0]


async def closed_since(fake: FakeModel, closes: int) -> float:
    with trio.fail_after(10):
        while len(fake.closed_at) <= closes:  # noqa: ASYNC110 (the fake records, no event per close)
            await trio.sleep(0.0005)
    return fake.closed_at[closes]


async def rounds(gateway: Gateway, fake: FakeModel, n: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"stop_close": [], "stop_durable": [], "abort_close": [], "turn_durable": []}
    for i in range(n):
        # (a)+(b): /stop
        to = f"p{i}"
        await stalled_turn(gateway, fake, to, 1)
        closes = len(fake.closed_at)
        t0 = trio.current_time()
        await submit_heard(gateway.submit_inbound, ON, Heard(f"{to}-2", to, "/stop"))
        got["stop_durable"].append(trio.current_time() - t0)
        got["stop_close"].append(await closed_since(fake, closes) - t0)
        # reference: the operator's abort of the same kind of turn
        sid = await stalled_turn(gateway, fake, f"r{i}", 1)
        closes = len(fake.closed_at)
        t0 = trio.current_time()
        gateway.abort_session(sid)
        got["abort_close"].append(await closed_since(fake, closes) - t0)
        # reference: an ordinary message -> durable turn (its reply goes through the fake too)
        t0 = trio.current_time()
        await submit_heard(gateway.submit_inbound, ON, Heard(f"q{i}", f"q{i}", "hello"))
        got["turn_durable"].append(trio.current_time() - t0)
        await trio.sleep(0.05)
    return got


async def raw_enqueue(gateway: Gateway, n: int) -> list[float]:
    """One durable entry through the outbox, as `Stopped.` is enqueued: the queue's floor."""
    assert gateway.current is not None
    outbox = gateway.current.runtime.outbox
    took = []
    for i in range(n):
        t0 = trio.current_time()
        await outbox.submit(kind="reply", origin=Origin("console", f"e{i}", "bench"), agent_id="main", text="x")
        took.append(trio.current_time() - t0)
    return took


async def main(args: argparse.Namespace) -> None:
    n = 10 if args.quick else args.rounds
    banner("bench_stop", {"rounds": n})
    fake = FakeModel()
    with tempfile.TemporaryDirectory() as tmp:
        home = Home(Path(tmp)).ensure()
        async with trio.open_nursery() as nursery:
            url = await nursery.start(serve_fake_model, fake)
            config = quick_config(
                **{
                    "models.default": {"baseUrl": url, "model": "fake", "stream": True},
                    "gateway.stalledTaskDetection.enabled": False,
                }
            )
            log = EventLog([])
            deps = gateway_deps(
                home.root,
                config,
                log,
                model=build_model(config.models["default"], {}),
                delivery_factory=queue_delivery(home, log, {}, in_thread),
                session_runner=in_thread,
            )
            gateway = Gateway(deps, config)
            await nursery.start(gateway.serve)
            got = await rounds(gateway, fake, n)
            got["raw_enqueue"] = await raw_enqueue(gateway, n)
            await gateway.request_drain("stop").done.wait()
            nursery.cancel_scope.cancel(reason="measured")
    ms = {k: [x * 1000 for x in v] for k, v in got.items()}

    def row(label: str, key: str, target: float | None) -> list[object]:
        p50 = percentile(ms[key], 50)
        met = "" if target is None else f"{target:g} ms: {verdict(p50 <= target)}"
        return [label, f"{p50:.1f}", f"{percentile(ms[key], 90):.1f}", f"{max(ms[key]):.1f}", met]

    table(
        ["", "p50 ms", "p90 ms", "max ms", "target"],
        [
            row("(a) /stop heard -> upstream closed", "stop_close", 50),
            row("    ref: operator abort -> upstream closed", "abort_close", None),
            row("(b) /stop heard -> Stopped. durable", "stop_durable", 100),
            row("    ref: message heard -> durable turn", "turn_durable", None),
            row("    ref: one durable enqueue", "raw_enqueue", None),
        ],
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--quick", action="store_true")
    trio.run(main, parser.parse_args())
