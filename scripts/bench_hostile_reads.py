"""Hostile answers and a crowd of pages against a real gateway process (issue 25, findings 7, 8).

    .venv/bin/python scripts/bench_hostile_reads.py [--quick] [--only endless|streams]

(e) An endless platform answer: a Telegram account whose `getUpdates` is answered, once the
    idle figure is taken, by a body that never ends (the loopback fake writes as fast as the
    gateway reads). The listener fails each poll at upstream.CHANNEL_BODY_BYTES (8 MiB) and
    backs off; the table gives the gateway's peak RSS against its idle RSS (the bar: at most
    +100 MB) and how many bytes the fake managed to send. Before issue 25: 2.9 GB in 13 s.
(f) The Control UI at scale: 5,000 sessions, then 200 `/v1/events` streams read continuously;
    `/healthz` is timed 400 times (the bar: p99 at most 50 ms), the bytes the streams got per
    second are counted, then SIGTERM with a 2 s drain budget (the bar: exit within 2.5 s).
    Before issue 25: 20 streams x 5,000 sessions kept a core at 92 %, 10.8 MB/s, /healthz 1.7 s.
(g) 20,000 dead letters: `GET /v1/deliveries` a page at a time (the page's `limit=50`, a page of
    1,000, and the default 100 per list), its size and time, and the slowest `/healthz` while it
    is fetched. Before issue 25: one 28 MB answer, a 0.85 s stall of the event loop.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, peak_rss_mb, percentile, rss_mb, table, temp_home, write_config

MIB = 1_048_576
CHANNEL_CAP = 8 * MIB


# --- (e) an endless platform answer --------------------------------------------------------------


class EndlessTelegram:
    """A loopback HTTP/1.1 server answering every request: with an empty update list after a
    second (idle), or, once `endless` is set, with a body that never ends."""

    def __init__(self) -> None:
        self.endless = False
        self.sent = 0
        self.polls = 0

    async def serve(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                await self._request(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the gateway hung up: what it should do at the cap

    async def _request(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            head += chunk
        self.polls += 1
        if not self.endless:
            await trio.sleep(1)
            body = json.dumps({"ok": True, "result": []}).encode()
            answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            await stream.send_all(answer + body)
            return
        await stream.send_all(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"ok":true,"result":[')
        filler = b'{"update_id":1,"message":{"chat":{"id":1},"text":"' + b"x" * 65000 + b'"}},'
        while True:
            await stream.send_all(filler)
            self.sent += len(filler)


async def endless_answer(seconds: float) -> list[tuple[object, ...]]:
    fake = EndlessTelegram()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, fake.serve, 0)
        port = listeners[0].socket.getsockname()[1]
        with temp_home("bench-hostile-endless-") as home:
            account = {"baseUrl": f"http://127.0.0.1:{port}", "tokenEnv": "BENCH_TG_TOKEN"}
            write_config(
                home,
                {
                    "channels": {"telegram": {"accounts": {"bot": account}}},
                    "agents": {"main": {"channels": ["telegram"]}},
                },
            )
            gp = GatewayProcess(home, env={"BENCH_TG_TOKEN": "123:bench"})
            await trio.to_thread.run_sync(gp.start, 60.0)
            try:
                await trio.sleep(5)  # a few idle polls
                idle = rss_mb(gp.pid)
                idle_peak = peak_rss_mb(gp.pid)
                fake.endless = True
                polls_before = fake.polls
                await trio.sleep(seconds)
                peak = peak_rss_mb(gp.pid)
                alive = gp.proc is not None and gp.proc.poll() is None
                polls = fake.polls - polls_before
            finally:
                await trio.to_thread.run_sync(gp.stop)
        nursery.cancel_scope.cancel()
    over = peak - max(idle, idle_peak)
    return [
        (
            f"{seconds:g}",
            f"{idle:.1f}",
            f"{peak:.1f}",
            f"{over:+.1f}",
            "yes" if over <= 100 else "NO",
            polls,
            f"{fake.sent / MIB:.1f}",
            "yes" if alive else "NO",
        )
    ]


# --- (f) 200 UI streams x 5,000 sessions -------------------------------------------------------


async def read_stream(port: int, token: str, got: list[int], opened: list[int]) -> None:
    """One page's `/v1/events`, read until the gateway ends it; bytes counted in `got[0]`."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return
    async with stream:
        request = f"GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\r\n"
        await stream.send_all(request.encode())
        opened[0] += 1
        try:
            while chunk := await stream.receive_some(65536):
                got[0] += len(chunk)
        except (trio.BrokenResourceError, OSError):
            pass


async def make_sessions(gp: GatewayProcess, count: int) -> None:
    import httpx2

    async def some(start: int, step: int) -> None:
        async with httpx2.AsyncClient(base_url=gp.base_url, headers=gp.headers, timeout=30, trust_env=False) as c:
            for n in range(start, count, step):
                body = {"agent": "main", "origin": {"channel": "console", "to": f"user{n}"}, "prompt": "hi"}
                (await c.post("/v1/sessions", json=body)).raise_for_status()

    async with trio.open_nursery() as nursery:
        for start in range(8):
            nursery.start_soon(some, start, 8)


async def quiet(gp: GatewayProcess) -> float:
    """Until every turn is done and every reply delivered (at most 300 s): the pages then watch
    an idle gateway with 5,000 sessions (the probe's case), not the backlog being worked off."""
    import httpx2

    t0 = time.perf_counter()
    async with httpx2.AsyncClient(base_url=gp.base_url, headers=gp.headers, timeout=30, trust_env=False) as client:
        with trio.move_on_after(300):
            while True:
                status = (await client.get("/v1/status")).json()
                if not status["work"] and status["queue"]["pending"] == 0:
                    break
                await trio.sleep(0.5)
    return time.perf_counter() - t0


async def healthz_times(gp: GatewayProcess, count: int) -> list[float]:
    import httpx2

    times = []
    async with httpx2.AsyncClient(base_url=gp.base_url, timeout=30, trust_env=False) as client:
        for _ in range(count):
            t0 = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            times.append(time.perf_counter() - t0)
            await trio.sleep(0.02)
    return times


async def ui_streams(sessions: int, streams: int) -> list[tuple[object, ...]]:
    budget = 2.0
    with temp_home("bench-hostile-streams-") as home:
        write_config(home, {"gateway": {"drain": {"timeoutSeconds": budget}}, "agents": {"main": {}}})
        gp = GatewayProcess(home)
        await trio.to_thread.run_sync(gp.start, 60.0)
        try:
            t0 = time.perf_counter()
            await make_sessions(gp, sessions)
            made = time.perf_counter() - t0
            await quiet(gp)
            got, opened = [0], [0]
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(read_stream, gp.port, gp.token, got, opened)
                await trio.sleep(3)  # every stream open and past its first snapshot
                base, b0 = got[0], time.perf_counter()
                times = await healthz_times(gp, 400)
                rate = (got[0] - base) / (time.perf_counter() - b0)
                assert gp.proc is not None
                s0 = time.perf_counter()
                gp.proc.send_signal(signal.SIGTERM)
                code = await trio.to_thread.run_sync(gp.proc.wait, 60)
                stopped = time.perf_counter() - s0
                nursery.cancel_scope.cancel()
        finally:
            await trio.to_thread.run_sync(gp.stop)
    p99 = percentile(times, 99) * 1000
    return [
        (
            sessions,
            f"{made:.1f}",
            f"{opened[0]}/{streams}",
            f"{percentile(times, 50) * 1000:.1f}",
            f"{p99:.1f}",
            "yes" if p99 <= 50 else "NO",
            f"{rate / 1000:.1f}",
            f"{stopped:.2f}",
            "yes" if stopped <= budget + 0.5 else "NO",
            code,
        )
    ]


# --- (g) 20,000 dead letters --------------------------------------------------------------------


def write_dead_letters(home: Path, count: int) -> None:
    """`count` dead letters written straight into `delivery-queue/failed/` (as the queue writes
    them, without an fsync each: the benchmark is about reading them)."""
    import datetime as dt

    from trio_gateway.policy.entry import DeliveryEntry, Payload
    from trio_gateway.storage.entry_files import entry_bytes
    from trio_gateway.storage.ids import IdGenerator

    folder = home / "delivery-queue" / "failed"
    folder.mkdir(parents=True, exist_ok=True)
    ids = IdGenerator()
    now = dt.datetime.now(dt.UTC)
    for n in range(count):
        entry_id = ids.new(now)
        entry = DeliveryEntry(
            entry_id, "manual", "console", f"user{n}", None, "main", None, Payload("x" * 200), entry_id, now, now
        ).dead("HTTP 404 no such user (a reason of a realistic length, as platforms write them)", now)
        (folder / f"{entry_id}.json").write_bytes(entry_bytes(entry))


async def dead_letters(count: int) -> list[tuple[object, ...]]:
    import httpx2

    with temp_home("bench-hostile-dead-") as home:
        write_config(home, {"agents": {"main": {}}})
        write_dead_letters(home, count)
        gp = GatewayProcess(home)
        await trio.to_thread.run_sync(gp.start, 120.0)
        try:
            rows = []
            async with httpx2.AsyncClient(base_url=gp.base_url, headers=gp.headers, timeout=60, trust_env=False) as c:
                for query in ("?limit=50", "?state=failed&limit=1000", ""):
                    t0 = time.perf_counter()
                    answer = await c.get(f"/v1/deliveries{query}")
                    took = time.perf_counter() - t0
                    answer.raise_for_status()
                    health = await healthz_during(gp, c, f"/v1/deliveries{query}")
                    body = answer.json()
                    rows.append(
                        (
                            f"GET /v1/deliveries{query}",
                            len(body.get("failed", [])),
                            body["total"].get("failed"),
                            f"{len(answer.content) / MIB:.2f}",
                            f"{took * 1000:.0f}",
                            f"{health * 1000:.1f}",
                        )
                    )
        finally:
            await trio.to_thread.run_sync(gp.stop)
    return rows


async def healthz_during(gp: GatewayProcess, client: object, path: str) -> float:
    """The slowest of 20 `/healthz` answers while `path` is fetched 5 times: the loop's stall."""
    import httpx2

    assert isinstance(client, httpx2.AsyncClient)
    times: list[float] = []

    async def probe() -> None:
        async with httpx2.AsyncClient(base_url=gp.base_url, timeout=60, trust_env=False) as own:
            for _ in range(20):
                t0 = time.perf_counter()
                await own.get("/healthz")
                times.append(time.perf_counter() - t0)
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(probe)
        for _ in range(5):
            await client.get(path)
    return max(times)


async def main(quick: bool, only: str | None) -> None:
    seconds, sessions, streams = (10.0, 1000, 50) if quick else (30.0, 5000, 200)
    banner("bench_hostile_reads", {"endless seconds": seconds, "sessions": sessions, "streams": streams})
    if only in (None, "endless"):
        rows = await endless_answer(seconds)
        table(
            ["endless for (s)", "idle RSS MB", "peak RSS MB", "over idle", "<= +100 MB", "polls",
             "MiB the fake sent", "gateway alive"],
            rows,
            title="(e) an endless getUpdates answer",
        )  # fmt: skip
    if only in (None, "dead"):
        rows = await dead_letters(2000 if quick else 20_000)
        table(
            ["request", "failed listed", "failed total", "answer MiB", "answer ms", "slowest /healthz meanwhile ms"],
            rows,
            title="(g) dead letters, a page at a time",
        )
    if only in (None, "streams"):
        rows = await ui_streams(sessions, streams)
        table(
            ["sessions", "made in (s)", "streams open", "/healthz p50 ms", "p99 ms", "p99 <= 50 ms",
             "streamed KB/s", "SIGTERM to exit (s)", "<= budget + 0.5", "exit"],
            rows,
            title="(f) UI streams",
        )  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s endless, 1,000 sessions, 50 streams")
    parser.add_argument("--only", choices=["endless", "dead", "streams"])
    args = parser.parse_args()
    trio.run(main, args.quick, args.only)
