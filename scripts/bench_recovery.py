"""Start-up with a full delivery queue: time to the first delivery, to the whole queue loaded,
and peak memory, at 10,000 and 100,000 pending entries.

    .venv/bin/python scripts/bench_recovery.py [--quick] [--sizes 10000,100000]

The entries are written straight into `<home>/delivery-queue/` in the queue's own file format
(`entry_to_json`, as `store.atomic_write_json` lays it out), all due, addressed to the `console`
channel. Each measurement is a fresh child process (so peak RSS is its own) that starts the
production delivery side (`assemble.queue_delivery`: the real `DeliveryQueue`, `ChannelSet` and
`DeliveryWorker`) and stops after the first delivery is acknowledged.

References in the same run, each in its own fresh child on the same files:
- `empty`: the same start with an empty queue (imports, startup, baseline RSS);
- `raw read`: `os.listdir` + read + `json.loads` of every file (the floor for any loader that
  parses the whole queue), and `raw list`: `os.listdir` alone (the floor for a loader that
  reads entries lazily, oldest first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import banner, peak_rss_mb, rss_mb, table, temp_home


def write_entries(queue_dir: Path, n: int) -> float:
    """Write n due entries, oldest first; returns the seconds it took (setup, not measured)."""
    from trio_gateway.policy.entry import DeliveryEntry, Payload, entry_to_json
    from trio_gateway.storage.ids import IdGenerator

    queue_dir.mkdir(parents=True, exist_ok=True)
    ids = IdGenerator()
    base = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    t0 = time.perf_counter()
    for i in range(n):
        when = base + dt.timedelta(milliseconds=i // 10)
        entry_id = ids.new(when)
        entry = DeliveryEntry(
            id=entry_id,
            kind="reply",
            channel="console",
            to=f"user-{i % 997}",
            account_id=None,
            agent_id="main",
            requester_origin=None,
            payload=Payload(f"Reply number {i}: your order has shipped and should arrive on Thursday."),
            idempotency_key=entry_id,
            created_at=when,
            next_attempt_at=when,
        )
        data = json.dumps(entry_to_json(entry), indent=2, sort_keys=False, ensure_ascii=False).encode() + b"\n"
        (queue_dir / f"{entry_id}.json").write_bytes(data)
    return time.perf_counter() - t0


def drop_page_cache_hint(queue_dir: Path) -> None:
    """Ask the kernel to drop these files' cached pages (POSIX_FADV_DONTNEED), so each child
    reads from a comparable cache state. Best effort: without root it only drops clean pages."""
    for name in os.listdir(queue_dir):
        try:
            fd = os.open(queue_dir / name, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# --- the children -----------------------------------------------------------------------------


def child_gateway(home: Path) -> dict[str, Any]:
    import trio

    from trio_gateway.app.assemble import queue_delivery
    from trio_gateway.log import EventLog
    from trio_gateway.sim.runtime import quick_config
    from trio_gateway.storage.atomic import in_thread
    from trio_gateway.storage.disk import StorageHealth
    from trio_gateway.storage.home import Home
    from trio_gateway.work.clock import WallClock
    from trio_gateway.work.units import WorkRegistry

    imported = time.time()
    out: dict[str, Any] = {"imported": imported}

    class FirstSend:
        """Wraps the console channel: the instant its first send returns ok."""

        def __init__(self, inner: Any, done: trio.Event) -> None:
            self.inner, self.done = inner, done
            self.name, self.deduplicates = inner.name, inner.deduplicates

        async def send(self, entry: Any) -> Any:
            outcome = await self.inner.send(entry)
            out.setdefault("first_sent", time.time())
            self.done.set()
            return outcome

    async def main() -> None:
        log = EventLog([])
        registry = WorkRegistry(log)
        config = quick_config(**{"delivery.rescanIntervalSeconds": 3600})
        done = trio.Event()

        class Gw:  # the three things the factory reads from the gateway
            wall = WallClock.start()
            storage = StorageHealth()

        Gw.registry = registry  # type: ignore[attr-defined]

        class Lookup:  # the worker's view of the channels: the console's first send is timed
            def __init__(self, channels: Any) -> None:
                self.channels = channels
                self.wrapped = FirstSend(channels.get("console", None), done)

            def get(self, channel: str, account_id: str | None) -> Any:
                return self.wrapped if channel == "console" else self.channels.get(channel, account_id)

            async def aclose(self) -> None:
                await self.channels.aclose()

        factory = queue_delivery(Home(home).ensure(), log, os.environ, in_thread, around=Lookup)
        service = await factory(config, Gw)  # type: ignore[arg-type]
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)  # returns after recover() + the directory listing
            out["loaded"] = time.time()
            out["rss_loaded_mb"] = rss_mb()
            out["scheduled"] = service.worker.pending_count()
            if out["scheduled"]:
                with trio.move_on_after(120):
                    await done.wait()
            out.setdefault("first_sent", float("nan"))
            # Let the ack of that first send land, then stop.
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        await service.aclose()

    trio.run(main)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def child_raw(home: Path, parse: bool) -> dict[str, Any]:
    queue_dir = home / "delivery-queue"
    names = sorted(n for n in os.listdir(queue_dir) if n.endswith(".json"))
    if parse:
        entries = [json.loads((queue_dir / n).read_bytes()) for n in names]
        first = entries[0] if entries else None
    else:
        first = json.loads((queue_dir / names[0]).read_bytes()) if names else None
    out = {"loaded": time.time(), "first_sent": time.time(), "count": len(names), "first_id": (first or {}).get("id")}
    out["peak_rss_mb"] = peak_rss_mb()
    out["rss_loaded_mb"] = rss_mb()
    return out


def run_child(kind: str, home: Path) -> dict[str, Any]:
    started = time.time()
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {kind} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["started"] = started
    result["ended"] = time.time()
    return result


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 and 10,000 entries")
    parser.add_argument("--sizes", default=None, help="comma-separated queue sizes (default 10000,100000)")
    parser.add_argument("--child", choices=["gateway", "raw-read", "raw-list"], help=argparse.SUPPRESS)
    parser.add_argument("--home", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        home = Path(args.home)
        raw = args.child != "gateway"
        result = child_raw(home, parse=args.child == "raw-read") if raw else child_gateway(home)
        print(json.dumps(result))
        return

    sizes = [int(x) for x in (args.sizes or ("1000,10000" if args.quick else "10000,100000")).split(",")]
    params = {"queue sizes": sizes, "entries": "due, channel console", "children": "fresh process each"}
    banner("bench_recovery", params)
    rows = []
    summary = []
    with temp_home("bench-recovery-empty-") as empty:
        base = run_child("gateway", empty)
    base_loaded = base["loaded"] - base["started"]
    rows.append(
        ["0 (empty)", "gateway", base_loaded, base["first_sent"] - base["started"], base["peak_rss_mb"], "", ""]
    )
    for n in sizes:
        with temp_home("bench-recovery-") as home:
            setup = write_entries(home / "delivery-queue", n)
            print(f"  wrote {n} entries in {setup:.1f}s", flush=True)
            results: dict[str, dict[str, Any]] = {}
            for kind in ("raw-list", "raw-read", "gateway"):
                drop_page_cache_hint(home / "delivery-queue")
                results[kind] = run_child(kind, home)
            for kind in ("gateway", "raw-read", "raw-list"):
                r = results[kind]
                loaded = r["loaded"] - r["started"]
                first = r["first_sent"] - r["started"]
                per_entry_kb = (r["peak_rss_mb"] - base["peak_rss_mb"]) * 1024 / n if kind == "gateway" else ""
                rows.append([n, kind, loaded, first, r["peak_rss_mb"], per_entry_kb, r.get("scheduled", "")])
            g, raw = results["gateway"], results["raw-read"]
            summary.append(
                [
                    n,
                    (g["loaded"] - g["started"] - base_loaded) / ((raw["loaded"] - raw["started"]) or 1e-9),
                    (g["loaded"] - g["started"] - base_loaded) / n * 1e6,
                ]
            )
    table(
        ["entries", "what", "loaded (s)", "first delivery (s)", "peak RSS (MB)", "RSS/entry (kB)", "scheduled"],
        rows,
        title="Start-up with a full queue (seconds from process start; fresh child each)",
    )
    table(
        ["entries", "gateway load minus empty start / raw read", "load µs per entry"],
        summary,
        title="Against the raw floor measured in the same run",
    )


if __name__ == "__main__":
    main()
