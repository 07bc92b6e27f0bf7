"""Channels that listen (SPEC 11): how fast a listener stops at a drain, how fast a heard message
is a durable turn, and how many messages a WeChat account carries end to end.

    .venv/bin/python scripts/bench_inbound.py [--quick]

One process, real clock, real disk, real loopback sockets: the production gateway wiring
(`assemble.production_gateway`: listeners, sessions, queue, adapters; the embedded echo model)
and the fake WeChat server (`testing.fake_channels` over hypercorn) in the same trio run, so
both sides' instants are read on one clock.

(a) Channel stop: with the long poll held open by the server, `request_drain("restart")`, until
    the fake server sees the poll's connection go (its handler cancelled by the disconnect).
    Reference, same run: a bare httpx long poll against the same server, cancelled by a scope.
    Target: <= 50 ms (the incident: "channel stop exceeded 5000ms").
(b) Inbound -> durable turn: a message pushed to the fake, until the listener's `submit` has
    returned (the turn and the message id fsynced in `sessions/`). One message at a time, as a
    person sends them: the previous reply sent and acknowledged first, so the write does not
    share the disk with that turn's own writes. Reference, same run: a bare long-poll wake-up
    on loopback plus one atomic fsynced write of a session-sized file in a worker thread (the
    floor of the two things the path must do, the write off the event loop as issue 25 wants
    every file write). Target: p50 <= 1.5x that floor (issue 21).
(c) Throughput: 1,000 messages across 100 conversations pushed at once; until every reply has
    reached the fake. Checked: each answered exactly once, in order within its conversation
    (SPEC 15: the worker sends one entry per conversation at a time). Reference, same run: the
    same gateway with that rule switched off (`Schedule._in_turn` always true, as before issue
    21). Target: 0 conversations out of order, messages/s >= 0.9x the unordered run.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, percentile, table, temp_home, verdict, write_config

from trio_gateway import upstream as http
from trio_gateway.app.assemble import production_gateway
from trio_gateway.channels import registry
from trio_gateway.channels.listen import ListenerSupervisor
from trio_gateway.delivery.scheduler import Schedule, Slot
from trio_gateway.log import EventLog, open_log
from trio_gateway.policy import config as cfg
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels, serve_fake_channels
from trio_gateway.storage.atomic import atomic_write_bytes
from trio_gateway.storage.disk import DiskRunners
from trio_gateway.storage.home import Home

WX = "openclaw-weixin"
LOG = open_log(None, echo=sys.stderr) if os.environ.get("BENCH_LOG") else EventLog()
TOKEN_ENV = "BENCH_WX_TOKEN"


def config_for(url: str) -> cfg.Config:
    return cfg.parse(
        {
            "gateway": {"drain": {"timeoutSeconds": 10}},
            "channels": {WX: {"accounts": {"bench": {"baseUrl": url, "tokenEnv": TOKEN_ENV}}}},
            "agents": {"main": {"channels": [WX]}},
            "delivery": {"concurrency": 32},
        },
        registry.account_kinds(),
    )


async def until(predicate: Callable[[], object], within: float = 60.0) -> None:
    with trio.fail_after(within):
        while True:
            if predicate():
                return
            await trio.sleep(0.0005)


class Timed:
    """Wraps the listeners' `submit` to note when each message became a durable turn."""

    def __init__(self, inner: Any, accepted: dict[str, float]) -> None:
        self.inner = inner
        self.accepted = accepted

    async def __call__(self, **kwargs: Any) -> Any:
        result = await self.inner(**kwargs)
        self.accepted[kwargs["prompt"]] = trio.current_time()
        return result


async def with_gateway(
    home: Path,
    fakes: FakeChannels,
    body: Callable[[Gateway, str], Awaitable[None]],
    accepted: dict[str, float] | None = None,
) -> None:
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_fake_channels, fakes))
        config = config_for(url)
        write_config(home, cfg.to_json(config))  # a restart reloads it from the home
        env = {TOKEN_ENV: "bench-secret"}
        gateway = production_gateway(Home(home), config, LOG, env, disks=DiskRunners.threads())
        if accepted is not None:
            timed_listeners(gateway, accepted)
        await nursery.start(gateway.serve)
        await body(gateway, url)
        gateway.request_drain("stop", force=True)
        await gateway.state.wait_value("stopped")
        nursery.cancel_scope.cancel()


def timed_listeners(gateway: Gateway, accepted: dict[str, float]) -> None:
    factory = gateway.deps.listener_factory
    assert factory is not None

    async def wrapped(config: cfg.Config, gw: Gateway, delivery: Any) -> ListenerSupervisor:
        supervisor = await factory(config, gw, delivery)
        supervisor.submit = Timed(supervisor.submit, accepted)
        return supervisor

    gateway.deps.listener_factory = wrapped


# --- (a) channel stop at a drain ----------------------------------------------------------------


async def stop_at_drain(rounds: int) -> tuple[list[float], list[float]]:
    fakes = FakeChannels()
    gateway_stops: list[float] = []

    async def body(gateway: Gateway, url: str) -> None:
        for _ in range(rounds):
            await until(lambda: fakes.inbound.polls_open[WX] == 1)
            await trio.sleep(0.05)  # the poll is held, as an idle account's is
            seen = len(fakes.inbound.closed_at)
            began = trio.current_time()
            done = gateway.request_drain("restart").done
            await until(lambda: len(fakes.inbound.closed_at) > seen)  # noqa: B023
            gateway_stops.append(fakes.inbound.closed_at[seen] - began)
            await done.wait()

    with temp_home("bench-inbound-") as home:
        await with_gateway(home, fakes, body)
    return gateway_stops, await bare_long_poll_cancels(rounds)


async def bare_long_poll_cancels(rounds: int) -> list[float]:
    """Reference: a bare httpx long poll on its own fake server, cancelled by its scope."""
    fakes = FakeChannels()
    headers = {"Authorization": "Bearer x", "AuthorizationType": "ilink_bot_token"}
    out = []
    async with trio.open_nursery() as server:
        url = await server.start(functools.partial(serve_fake_channels, fakes))
        async with http.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            for _ in range(rounds):
                seen = len(fakes.inbound.closed_at)
                async with trio.open_nursery() as nursery:
                    body = {"get_updates_buf": "0", "base_info": {}}
                    nursery.start_soon(functools.partial(client.post, "/ilink/bot/getupdates", json=body))
                    await until(lambda: fakes.inbound.polls_open[WX] == 1)
                    await trio.sleep(0.05)
                    began = trio.current_time()
                    nursery.cancel_scope.cancel()
                await until(lambda: len(fakes.inbound.closed_at) > seen)  # noqa: B023
                out.append(fakes.inbound.closed_at[seen] - began)
        server.cancel_scope.cancel()
    return out


# --- (b) inbound -> durable turn ------------------------------------------------------------------


async def to_durable_turn(count: int) -> tuple[list[float], list[float], list[float]]:
    fakes = FakeChannels()
    accepted: dict[str, float] = {}
    latencies: list[float] = []

    async def body(gateway: Gateway, url: str) -> None:
        for i in range(count):
            text = f"latency {i}"
            # One message at a time, as a person sends them: the previous reply is sent and
            # acknowledged first, so this write does not share the disk with that turn's own.
            await until(lambda: len(fakes.delivered(WX)) >= i)  # noqa: B023
            await trio.sleep(0.02)  # and its ack (an unlink and a folder fsync) is done
            await until(lambda: fakes.inbound.polls_open[WX] == 1)
            pushed = trio.current_time()
            fakes.push(WX, text, sender=f"u{i % 10}@im.wechat")
            await until(lambda: text in accepted)  # noqa: B023
            latencies.append(accepted[text] - pushed)

    with temp_home("bench-inbound-") as home:
        await with_gateway(home, fakes, body, accepted)
        wakes = await bare_wakeups(count)
        writes = await bare_writes(home, count)
    return latencies, wakes, writes


async def bare_wakeups(count: int) -> list[float]:
    """Reference: a long poll on loopback woken by a push, no gateway."""
    fakes = FakeChannels()
    out: list[float] = []
    headers = {"Authorization": "Bearer x", "AuthorizationType": "ilink_bot_token"}
    async with trio.open_nursery() as nursery:
        url = await nursery.start(functools.partial(serve_fake_channels, fakes))
        async with http.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
            for i in range(count):
                body = {"get_updates_buf": str(i), "base_info": {}}
                result: list[float] = []

                async def poll(b: dict[str, Any] = body, r: list[float] = result) -> None:
                    await client.post("/ilink/bot/getupdates", json=b)
                    r.append(trio.current_time())

                async with trio.open_nursery() as inner:
                    inner.start_soon(poll)
                    await until(lambda: fakes.inbound.polls_open[WX] == 1)
                    pushed = trio.current_time()
                    fakes.push(WX, f"wake {i}")
                out.append(result[0] - pushed)
        nursery.cancel_scope.cancel()
    return out


async def bare_writes(home: Path, count: int) -> list[float]:
    """Reference: one atomic fsynced write of a session-sized file (what accepting must do),
    made as a Trio program must make it: in a worker thread, off the event loop (issue 25)."""
    session_files = list((home / "sessions").glob("*.json"))
    size = max((p.stat().st_size for p in session_files), default=2048)
    data = os.urandom(size // 2).hex().encode()
    out = []
    for i in range(count):
        await trio.sleep(0.02)  # the pace of (b): one write at a time on a quiet disk
        began = trio.current_time()
        await trio.to_thread.run_sync(atomic_write_bytes, home / "bare" / f"{i % 10}.json", data)
        out.append(trio.current_time() - began)
    return out


# --- (c) 1,000 messages across 100 conversations ----------------------------------------------------


async def throughput(messages: int, conversations: int) -> tuple[float, int, int, int]:
    fakes = FakeChannels()
    result: list[float] = []

    async def body(gateway: Gateway, url: str) -> None:
        await until(lambda: fakes.inbound.polls_open[WX] == 1)
        began = trio.current_time()
        for i in range(messages):
            fakes.push(WX, f"m{i}", sender=f"c{i % conversations}@im.wechat")
        await until(lambda: len(fakes.delivered(WX)) >= messages, within=600)
        result.append(trio.current_time() - began)
        await trio.sleep(0.5)  # room for a duplicate to show up, were there one

    with temp_home("bench-inbound-") as home:
        await with_gateway(home, fakes, body)
    texts = collections.Counter(m.text for m in fakes.delivered(WX))
    lost = sum(1 for i in range(messages) if texts[f"m{i}"] == 0)
    twice = sum(1 for n in texts.values() if n > 1)
    by_conversation: dict[str, list[int]] = collections.defaultdict(list)
    for m in fakes.delivered(WX):
        by_conversation[m.to].append(int(m.text[1:]))
    out_of_order = sum(1 for seq in by_conversation.values() if seq != sorted(seq))
    return result[0], lost, twice, out_of_order


def _always_in_turn(_self: Schedule, _entry_id: str, _slot: Slot) -> bool:
    """The reference worker: no order per conversation (as before issue 21)."""
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (seconds)")
    args = parser.parse_args()
    rounds, latency_n, messages, conversations = (5, 50, 200, 20) if args.quick else (20, 300, 1000, 100)
    banner(
        "bench_inbound",
        {"stop rounds": rounds, "latency messages": latency_n, "messages": messages, "conversations": conversations},
    )
    gateway_stops, bare_stops = trio.run(stop_at_drain, rounds)
    latencies, wakes, writes = trio.run(to_durable_turn, latency_n)
    took, lost, twice, disorder = trio.run(throughput, messages, conversations)
    ordered_rule = Schedule._in_turn
    setattr(Schedule, "_in_turn", _always_in_turn)  # noqa: B010  # the reference: the rule off
    try:
        free_took, free_lost, free_twice, free_disorder = trio.run(throughput, messages, conversations)
    finally:
        setattr(Schedule, "_in_turn", ordered_rule)  # noqa: B010

    floor = percentile(wakes, 50) + percentile(writes, 50)

    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:.2f}"

    table(
        ["measure", "p50 ms", "p99 ms", "max ms", "reference p50 / p99 ms", "target", "verdict"],
        [
            ["drain start -> long poll closed", ms(gateway_stops, 50), ms(gateway_stops, 99),
             f"{max(gateway_stops) * 1000:.2f}", f"{ms(bare_stops, 50)} / {ms(bare_stops, 99)} (bare cancel)",
             "<= 50 ms", verdict(max(gateway_stops) <= 0.050)],
            ["message pushed -> durable turn", ms(latencies, 50), ms(latencies, 99),
             f"{max(latencies) * 1000:.2f}",
             f"{ms(wakes, 50)} / {ms(wakes, 99)} (wake) + {ms(writes, 50)} / {ms(writes, 99)} (fsync write)",
             "p50 <= 1.5x (wake + write)", verdict(percentile(latencies, 50) <= 1.5 * floor)],
        ],
        title="latency",
    )  # fmt: skip
    ratio = (messages / took) / (messages / free_took)
    table(
        ["worker", "messages", "conversations", "seconds", "messages/s", "lost", "answered twice", "out of order"],
        [
            ["ordered (SPEC 15)", messages, conversations, f"{took:.2f}", f"{messages / took:.0f}", lost, twice,
             disorder],
            ["unordered (reference)", messages, conversations, f"{free_took:.2f}", f"{messages / free_took:.0f}",
             free_lost, free_twice, free_disorder],
        ],
        title="throughput (WeChat fake, echo model, every reply sent back through the queue)",
    )  # fmt: skip
    print(f"message -> durable turn p50 / floor p50: {percentile(latencies, 50) / floor:.2f} (target <= 1.5)")
    print(
        f"ordered / unordered messages/s: {ratio:.2f} (target >= 0.9: {verdict(ratio >= 0.9)}); "
        f"out of order: {disorder} (target 0: {verdict(disorder == 0)})"
    )
    if lost or twice or disorder:
        sys.exit(1)


if __name__ == "__main__":
    main()
