"""The pairing book on files (SPEC 15, `storage/access.py`): what the access check pays per message.

    .venv/bin/python scripts/bench_pairing.py [--quick]

Production runner (a worker thread per call), a real disk under a temporary home:

(a) `is_approved` of an approved sender, on an account with 1 and with 1,000 approvals (the
    file unchanged since it was last read: the book keeps the parsed record while the file's
    inode, size and mtime stay). References, same run: one thread hop that `stat`s the file (the
    floor), one that reads and parses it (what each call would cost without the cache), and a
    bare thread hop.
(b) A stranger's flood: one sender's 1,000 messages after their code: `is_approved` then
    `offer_code` each (what the access check asks), per message; how many file writes it made
    (the rule: the first message writes the code, the rest write nothing).
(c) `approve` (an fsynced atomic write): against `atomic_write_bytes` of the same bytes alone.

Medians (p99 too) of N calls; the machine is shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, median, percentile, table

from trio_gateway.log import EventLog
from trio_gateway.storage import access
from trio_gateway.storage.access import FileAccessBook
from trio_gateway.storage.atomic import atomic_write_bytes, in_thread, read_regular

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> list[float]:
    times = []
    for _ in range(n):
        began = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - began)
    return times


def row(name: str, times: list[float]) -> list[str]:
    return [name, f"{median(times) * 1e6:.0f}", f"{percentile(times, 99) * 1e6:.0f}"]


async def approved_account(root: Path, approvals: int) -> FileAccessBook:
    """A book whose account `bot` holds `approvals` senders, `s0` among them (written directly)."""
    record = access.AccountRecord({f"s{i}": NOW for i in range(approvals)})
    path = root / "telegram" / "bot.json"
    await in_thread(lambda: atomic_write_bytes(path, json.dumps(record.to_json()).encode()))
    return FileAccessBook(root, in_thread, EventLog())


async def timed_write(source: Path, target: Path) -> float:
    """One fsynced atomic write of `source`'s bytes to `target`, alone: the floor of a change."""
    data = await in_thread(source.read_bytes)
    began = time.perf_counter()
    await in_thread(lambda: atomic_write_bytes(target, data))
    return time.perf_counter() - began


async def approved_rows(root: Path, approvals: int, n: int) -> list[list[str]]:
    book = await approved_account(root, approvals)
    path = root / "telegram" / "bot.json"
    asked = await timed(lambda: book.is_approved("telegram", "bot", "s0"), n)
    stat = await timed(lambda: in_thread(lambda: os.stat(path)), n)
    parse = await timed(lambda: in_thread(lambda: json.loads(read_regular(path, access.MAX_ACCESS_FILE_BYTES))), n)
    return [
        row(f"is_approved, {approvals} approval(s)", asked),
        row("  floor: thread hop + stat", stat),
        row("  (no cache: thread hop + read + parse)", parse),
    ]


async def main(n: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pairing-") as tmp:
        for approvals in (1, 1000):
            rows += await approved_rows(Path(tmp) / f"a{approvals}", approvals, n)
        rows.append(row("  bare thread hop", await timed(lambda: in_thread(lambda: None), n)))

        flood_root = Path(tmp) / "flood"
        flood = FileAccessBook(flood_root, in_thread, EventLog())
        writes = 0
        # Every write of the book goes through its module's `atomic_write_bytes`: counted there.
        real_write = vars(access)["atomic_write_bytes"]

        def counting(*args: object, **kw: object) -> None:
            nonlocal writes
            writes += 1
            real_write(*args, **kw)

        vars(access)["atomic_write_bytes"] = counting

        async def message() -> None:
            if not await flood.is_approved("telegram", "bot", "stranger"):
                await flood.offer_code("telegram", "bot", "stranger", NOW)

        times = await timed(message, 1000)
        vars(access)["atomic_write_bytes"] = real_write
        rows.append(row("stranger's message (is_approved + offer_code)", times))

        codes = iter(range(10**6))
        approve_book = FileAccessBook(Path(tmp) / "approve", in_thread, EventLog(), lambda: f"C{next(codes):07d}")
        approve_times, write_times = [], []
        for i in range(n // 10 or 1):
            offered = await approve_book.offer_code("telegram", "bot", f"p{i}", NOW)
            assert offered is not None
            began = time.perf_counter()
            await approve_book.approve("telegram", offered.code, NOW)
            approve_times.append(time.perf_counter() - began)
            write_times.append(
                await timed_write(Path(tmp) / "approve" / "telegram" / "bot.json", Path(tmp) / "ref.json")
            )
        rows.append(row("approve", approve_times))
        rows.append(row("  floor: atomic_write_bytes alone", write_times))
    table(["call", "p50 µs", "p99 µs"], rows)
    print(f"stranger's 1,000 messages: {writes} file write(s) (expected 1)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 200 if args.quick else 2000
    banner("bench_pairing", {"calls": n})
    trio.run(main, n)
