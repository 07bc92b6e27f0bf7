"""The access check's cost (SPEC 15, issue 20): inbound message → durable turn, p50, for an
account with `dmPolicy: "pairing"` whose sender is approved (the check asks the pairing book
on files, `access/`) against the same account with `dmPolicy: "open"` (the book is never
asked), in the same run.

    .venv/bin/python scripts/bench_access.py [--quick]

One process, real clock, real disk, loopback sockets: the production gateway wiring and the
fake WeChat server in the same trio run (as `bench_inbound.py` (b)). Rounds alternate the two
policies, each round a fresh gateway and home, so a drift of the machine's load falls on both.
Sequential messages over 10 senders. Target: pairing p50 within 5 % of open.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, percentile, table, temp_home, verdict, write_config
from bench_inbound import LOG, TOKEN_ENV, WX, timed_listeners, until

from trio_gateway.app.assemble import production_gateway
from trio_gateway.channels import registry
from trio_gateway.policy import config as cfg
from trio_gateway.sim.fake_channels import FakeChannels, serve_fake_channels
from trio_gateway.storage.access import FileAccessBook
from trio_gateway.storage.disk import DiskRunners
from trio_gateway.storage.home import Home

SENDERS = [f"u{i}@im.wechat" for i in range(10)]


def config_for(url: str, policy: str) -> cfg.Config:
    account = {"baseUrl": url, "tokenEnv": TOKEN_ENV, "dmPolicy": policy}
    return cfg.parse(
        {"channels": {WX: {"accounts": {"bench": account}}}, "agents": {"main": {"channels": [WX]}}},
        registry.account_kinds(),
    )


async def one_round(policy: str, count: int) -> list[float]:
    """`count` messages pushed one after another; each one's push → its turn durable."""
    fakes = FakeChannels()
    accepted: dict[str, float] = {}
    latencies: list[float] = []
    with temp_home("bench-access-") as home:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_fake_channels, fakes))
            config = config_for(url, policy)
            write_config(home, cfg.to_json(config))
            gateway = production_gateway(Home(home), config, LOG, {TOKEN_ENV: "x"}, disks=DiskRunners.threads())
            now = dt.datetime.now(dt.UTC)
            for sender in SENDERS:  # approved as an operator would: a code, then its approval
                code = await gateway.deps.pairing.offer_code(WX, "bench", sender, now)
                assert code is not None
                await gateway.deps.pairing.approve(WX, code.code, now)
            timed_listeners(gateway, accepted)
            await nursery.start(gateway.serve)
            for i in range(count):
                text = f"{policy} {i}"
                await until(lambda: fakes.inbound.polls_open[WX] == 1)
                pushed = trio.current_time()
                fakes.push(WX, text, sender=SENDERS[i % len(SENDERS)])
                await until(lambda: text in accepted)  # noqa: B023
                latencies.append(accepted[text] - pushed)
            gateway.request_drain("stop", force=True)
            await gateway.state.wait_value("stopped")
            nursery.cancel_scope.cancel()
    return latencies


async def book_alone(count: int) -> list[float]:
    """Reference, same run: the one thing the check adds, `is_approved` on the file book
    through the production access runner (a thread hop and a `stat`), on its own."""
    out = []
    with temp_home("bench-access-book-") as home:
        book = FileAccessBook(Home(home).access_dir, DiskRunners.threads().access, LOG)
        now = dt.datetime.now(dt.UTC)
        code = await book.offer_code(WX, "bench", SENDERS[0], now)
        assert code is not None
        await book.approve(WX, code.code, now)
        for _ in range(count):
            began = trio.current_time()
            assert await book.is_approved(WX, "bench", SENDERS[0])
            out.append(trio.current_time() - began)
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 50 messages per policy")
    args = parser.parse_args()
    rounds, count = (2, 50) if args.quick else (4, 150)
    banner("bench_access", {"rounds": rounds, "messages per round": count})
    results: dict[str, list[float]] = {"open": [], "pairing": []}
    for _ in range(rounds):
        for policy in ("open", "pairing"):
            results[policy] += await one_round(policy, count)
    rows = [
        [policy, len(values), f"{percentile(values, 50) * 1e3:.2f}", f"{percentile(values, 99) * 1e3:.2f}"]
        for policy, values in results.items()
    ]
    table(["dmPolicy", "n", "p50 ms", "p99 ms"], rows)
    alone = await book_alone(len(results["pairing"]))
    p50, p99 = percentile(alone, 50) * 1e3, percentile(alone, 99) * 1e3
    print(f"reference: is_approved alone, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    ratio = percentile(results["pairing"], 50) / percentile(results["open"], 50)
    print(f"pairing (approved sender) / open, p50: {ratio:.3f} (target <= 1.05: {verdict(ratio <= 1.05)})")


if __name__ == "__main__":
    trio.run(main)
