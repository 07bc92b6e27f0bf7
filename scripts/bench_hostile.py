"""Unauthenticated clients against a real gateway process: memory and connections they can pin.

    .venv/bin/python scripts/bench_hostile.py [--quick] [--slow N] [--connections N]

A real gateway (`trio-gateway gateway start` on a temporary home) with one Slack account and
`gateway.maxConnections` 1000. Three attacks, each against the idle gateway's RSS measured in
the same run as the reference:
  (a) N slow clients each announce a 1 MiB body to an account that does not exist and then
      trickle it (64 KiB every 0.2 s): refused before the body is read, so RSS should not move;
  (b) the same against the existing account with signature headers that look valid (a fresh
      timestamp, a wrong signature): the body IS read (the signature covers it), at most
      gateway.maxUnverifiedBodies (64) at once (503 beyond), each within
      gateway.bodyReadTimeoutSeconds (60 s here);
  (c) C connections opened at once, each sending the headers of a request whose body never
      comes (so hypercorn's 5 s idle close does not free slots meanwhile): how many the gateway
      serves (at most maxConnections), how many it closes at accept, and how soon /healthz
      answers once they leave (while the cap is full, a new connection is closed too).
Before issue 9 (measured by the issue's author): (a) +319 MB for 300 clients, (c) 3,000 of
3,000 accepted.
  (d) (`--only stderr`) a gateway whose stderr is a pipe nobody reads, asked for 10,000 turns
      by 8 clients: how many are answered, whether /healthz still answers, how many stderr
      lines were dropped (`logWriteFailures`), and how long SIGTERM takes to end it (drain
      budget 2 s). Before issue 25: frozen after ~640 requests, SIGTERM ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, median, peak_rss_mb, rss_mb, table, temp_home, write_config

MIB = 1_048_576
CHUNK = 65_536
MAX_CONNECTIONS = 1000


def config() -> dict[str, object]:
    account = {
        "baseUrl": "http://127.0.0.1:9",
        "tokenEnv": "BENCH_SLACK_TOKEN",
        "signingSecretEnv": "BENCH_SLACK_SIGNING",
    }
    return {
        "gateway": {"maxConnections": MAX_CONNECTIONS, "bodyReadTimeoutSeconds": 60},
        "channels": {"slack": {"accounts": {"T1": account}}},
        "agents": {"main": {"channels": ["console", "slack"]}},
    }


async def slow_client(port: int, path: str, headers: str, results: list[str]) -> None:
    """Announce 1 MiB, trickle it; record how the server answered ('404', '408', 'closed')."""
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        results.append("refused")
        return
    async with stream:
        head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {MIB}\r\n{headers}\r\n"
        try:
            await stream.send_all(head.encode())
            answer = b""
            with trio.move_on_after(30):
                async with trio.open_nursery() as nursery:

                    async def trickle() -> None:
                        # The server may answer and close mid-body: that ends the trickle.
                        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                            for _ in range(MIB // CHUNK):
                                await stream.send_all(b"x" * CHUNK)
                                await trio.sleep(0.2)

                    nursery.start_soon(trickle)
                    while chunk := await stream.receive_some(65536):
                        answer += chunk
                        if b"\r\n\r\n" in answer:
                            break
                    nursery.cancel_scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        results.append(answer[9:12].decode() if answer.startswith(b"HTTP/1.1 ") else "closed")


async def attack_bodies(gp: GatewayProcess, n: int, path: str, headers: str) -> tuple[float, float, dict[str, int]]:
    """(peak RSS during, seconds, answers by kind)."""
    assert gp.port is not None
    results: list[str] = []
    peak = rss_mb(gp.pid)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(slow_client, gp.port, path, headers, results)

        async def sample() -> None:
            nonlocal peak
            while len(results) < n:
                peak = max(peak, rss_mb(gp.pid))
                await trio.sleep(0.05)

        nursery.start_soon(sample)
    counts: dict[str, int] = {}
    for r in results:
        counts[r] = counts.get(r, 0) + 1
    return peak, time.perf_counter() - started, counts


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def attack_connections(gp: GatewayProcess, c: int) -> tuple[int, int, int, float]:
    """(held, closed by the gateway, the gateway's open fds meanwhile, seconds from the
    holders leaving to /healthz 200)."""
    import httpx2

    assert gp.port is not None
    port = gp.port
    streams: list[trio.SocketStream] = []
    head = f"POST /v1/sessions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {gp.token}\r\ncontent-length: 100\r\n\r\n"

    async def connect() -> None:
        with contextlib.suppress(OSError):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            streams.append(stream)
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(head.encode())

    async with trio.open_nursery() as nursery:
        for _ in range(c):
            nursery.start_soon(connect)
    closed: set[int] = set()
    last, stable = -1, 0
    # The accept loop works through the backlog: count until two readings a second apart agree.
    for _ in range(30):
        for i, stream in enumerate(streams):
            if i in closed:
                continue
            with trio.move_on_after(0.001):
                try:
                    if await stream.receive_some(1) == b"":
                        closed.add(i)
                except trio.BrokenResourceError:
                    closed.add(i)
        stable = stable + 1 if len(closed) == last else 0
        if stable >= 3:
            break
        last = len(closed)
        await trio.sleep(1.0)
    fds = open_fds(gp.pid)
    for stream in streams:
        await stream.aclose()
    # Full means full (a new connection is closed too); once the holders leave, it serves again.
    t0 = time.perf_counter()
    async with httpx2.AsyncClient(trust_env=False) as client:
        while time.perf_counter() - t0 < 30:
            with contextlib.suppress(httpx2.HTTPError):
                if (await client.get(f"{gp.base_url}/healthz", timeout=5)).status_code == 200:
                    return len(streams) - len(closed), len(closed), fds, time.perf_counter() - t0
            await trio.sleep(0.05)
    return len(streams) - len(closed), len(closed), fds, float("nan")


async def main(n_slow: int, n_conn: int) -> None:
    banner("bench_hostile", {"slow clients": n_slow, "idle connections": n_conn, "maxConnections": MAX_CONNECTIONS})
    with temp_home("bench-hostile-") as home:
        write_config(home, config())
        gp = GatewayProcess(home, env={"BENCH_SLACK_SIGNING": "secret", "BENCH_SLACK_TOKEN": "xoxb-bench"})
        await trio.to_thread.run_sync(gp.start, 60.0)
        try:
            await trio.sleep(3.0)  # the accept loop catches up with the backlog; still short of the 5 s idle close
            idle = rss_mb(gp.pid)
            rows = [("idle gateway (reference)", f"{idle:.1f}", "-", "-", "-")]
            unknown = await attack_bodies(gp, n_slow, "/channels/slack/nope/events", "")
            rows.append(("(a) 1 MiB to an unknown account", f"{unknown[0]:.1f}", f"{unknown[0] - idle:+.1f}",
                         f"{unknown[1]:.1f}", str(unknown[2])))  # fmt: skip
            stamp = int(time.time())
            signed = f"x-slack-request-timestamp: {stamp}\r\nx-slack-signature: v0={'0' * 64}\r\n"
            known = await attack_bodies(gp, n_slow, "/channels/slack/T1/events", signed)
            rows.append(("(b) 1 MiB, signature-shaped headers", f"{known[0]:.1f}", f"{known[0] - idle:+.1f}",
                         f"{known[1]:.1f}", str(known[2])))  # fmt: skip
            table(["attack", "peak RSS MB", "vs idle", "seconds", "answers"], rows)
            idle_fds = open_fds(gp.pid)
            held, closed, fds, health = await attack_connections(gp, n_conn)
            table(["opened", "open (client's view)", "closed by the gateway", "gateway fds (idle)",
                   "/healthz 200 after release (s)"],
                  [(n_conn, held, closed, f"{fds} ({idle_fds})", f"{health:.3f}")])  # fmt: skip
            print(f"gateway peak RSS over the run: {peak_rss_mb(gp.pid):.1f} MB")
        finally:
            await trio.to_thread.run_sync(gp.stop)


# --- (d) a stderr nobody reads (issue 25, finding 4) -----------------------------------------

STDERR_CLIENTS = 8
STDERR_DRAIN_SECONDS = 2


class UnreadStderrGateway(GatewayProcess):
    """The gateway with its stderr a pipe that nobody ever reads (Docker's blocking log mode, a
    stuck journald, a paused terminal): once the pipe's 64 KiB are full, a write blocks."""

    def start(self, timeout: float = 30.0) -> float:
        cmd = [sys.executable, "-m", "trio_gateway", "--home", str(self.home), "gateway", "start", "--port", "0"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=self.env)
        self.wait_ready(timeout)
        return time.perf_counter() - t0


async def turns(gp: GatewayProcess, count: int, answered: list[float]) -> None:
    import httpx2

    async with httpx2.AsyncClient(base_url=gp.base_url, headers=gp.headers, timeout=10, trust_env=False) as client:
        for n in range(count):
            origin = {"channel": "console", "to": f"user{n % 50}"}
            t0 = time.perf_counter()
            reply = await client.post("/v1/sessions", json={"agent": "main", "origin": origin, "prompt": "x"})
            if reply.status_code == 202:
                answered.append(time.perf_counter() - t0)


def shutdown_lines(home: Path) -> list[str]:
    """The drain's and the shutdown's own lines from the gateway's log (its figures, not ours)."""
    log = home / "logs" / "gateway.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return [ln for ln in text.splitlines() if "[SHUTDOWN]" in ln or "[DRAINING]" in ln]


async def stderr_never_read(requests: int) -> None:
    import httpx2

    banner("bench_hostile (d): stderr never read", {"requests": requests, "clients": STDERR_CLIENTS})
    with temp_home("bench-hostile-stderr-") as home:
        write_config(home, {"gateway": {"drain": {"timeoutSeconds": STDERR_DRAIN_SECONDS}}})
        gp = UnreadStderrGateway(home)
        await trio.to_thread.run_sync(gp.start, 60.0)
        try:
            answered: list[float] = []
            t0 = time.perf_counter()
            with trio.move_on_after(600) as bound:
                async with trio.open_nursery() as nursery:
                    for _ in range(STDERR_CLIENTS):
                        nursery.start_soon(turns, gp, requests // STDERR_CLIENTS, answered)
            took = time.perf_counter() - t0
            health: list[float] = []
            async with httpx2.AsyncClient(base_url=gp.base_url, timeout=10, trust_env=False) as client:
                for _ in range(20):
                    h0 = time.perf_counter()
                    if (await client.get("/healthz")).status_code == 200:
                        health.append(time.perf_counter() - h0)
                status = (await client.get("/v1/status", headers=gp.headers)).json()
            assert gp.proc is not None
            s0 = time.perf_counter()
            gp.proc.send_signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(gp.proc.wait, 60)
            stopped = time.perf_counter() - s0
            dropped = status.get("storage", {}).get("logWriteFailures", "?")
            table(
                ["turns accepted (202)", "seconds", "/healthz 200 (of 20), p50 ms", "stderr lines dropped",
                 "SIGTERM to exit (s)", "exit", "budget (s)"],
                [(f"{len(answered)}{' (cut at 600 s)' if bound.cancelled_caught else ''}", f"{took:.1f}",
                  f"{len(health)}, {median(health) * 1000:.1f}" if health else "0", dropped, f"{stopped:.2f}", code,
                  STDERR_DRAIN_SECONDS)],
            )  # fmt: skip
            print("the gateway's own lines:", *shutdown_lines(home), sep="\n  ")
        finally:
            await trio.to_thread.run_sync(gp.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="50 slow clients, 1,200 connections, 1,000 requests")
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--stderr-requests", type=int, default=10_000, help="(d): turns asked with stderr unread")
    parser.add_argument("--only", choices=["strangers", "stderr"], help="run only (a)-(c) or only (d)")
    args = parser.parse_args()
    slow, conns = (50, 1200) if args.quick else (args.slow, args.connections)
    if args.only != "stderr":
        trio.run(main, slow, conns)
    if args.only != "strangers":
        trio.run(stderr_never_read, 1000 if args.quick else args.stderr_requests)
