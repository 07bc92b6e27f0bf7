"""Tools under restart and stall: MCP servers as real stdio processes (SPEC 14).

    .venv/bin/python scripts/bench_tools.py [--quick] [--calls 100] [--servers 10] [--timeout 2]

1. Restart with C hung tool calls across S stdio servers (`testing.fake_mcp`, tool `hang`): a
   real gateway process, C sessions each stuck in one `tool_call`, then
   `POST /v1/gateway/restart {"wait": true}`. Overhead = wall time from the request to the answer
   (generation 2 accepts work) minus the drain timeout T; the gateway's own drain report
   (`waitedSeconds`) is shown beside it. Reference in the same run: the same gateway with the same
   S servers and no calls (its restart stops and restarts the servers too). resumeInterrupted is
   on (the default): generation 2 runs the cut turns again, after the figure. Then: every server
   process of generation 1 gone (not alive, not a zombie), no process of ours left but generation
   2's servers (no orphan), and every server of generation 1 told `notifications/cancelled`.
   Target: overhead <= 0.5 s.
2. Stall abort of a silent tool: threshold 2 s, check interval 0.5 s; K calls of `hang`, each
   from its own session. Figure: from the server receiving the call to the server receiving
   `notifications/cancelled`, minus the threshold. Target: <= one check interval.
3. Per-call overhead: N sequential `echo` calls through the gateway's tool path (a `tool_call`
   unit, `ToolBox.call`, our stdio transport) against N through the SDK directly
   (`stdio_client` + `ClientSession.call_tool`), same fake server program, same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_common import GatewayProcess, banner, percentile, table, temp_home, verdict, write_config

from trio_gateway import upstream as http
from trio_gateway.sim.fake_mcp import STDIO_COMMAND, process_state, read_events

FAKE = STDIO_COMMAND
events = read_events


def tools_config(home: Path, servers: int, timeout: float, stall: dict[str, Any]) -> dict[str, Any]:
    names = [f"s{i}" for i in range(servers)]
    return {
        "gateway": {
            "drain": {"timeoutSeconds": timeout},
            "channelStopTimeoutSeconds": 2,
            "stalledTaskDetection": stall,
        },
        "tools": {
            "mcpServers": {
                name: {"command": [*FAKE, "--name", name, "--events", str(home / f"events-{name}.jsonl")]}
                for name in names
            }
        },
        "agents": {"main": {"tools": [f"{name}.*" for name in names]}},
    }


async def status(client: Any, gp: GatewayProcess) -> dict[str, Any]:
    r = await client.get(f"{gp.base_url}/v1/status", headers=gp.headers, timeout=60)
    result: dict[str, Any] = r.json()
    return result


async def wait_servers(client: Any, gp: GatewayProcess, count: int, generation: int) -> list[dict[str, Any]]:
    with trio.fail_after(120):
        while True:
            st = await status(client, gp)
            servers = st["tools"]["mcpServers"]
            if st["generation"] == generation and sum(s["state"] == "running" for s in servers) == count:
                return list(servers)
            await trio.sleep(0.1)


async def start_sessions(client: Any, gp: GatewayProcess, prompts: list[str]) -> None:
    async def one(i: int, prompt: str) -> None:
        body = {"agent": "main", "origin": {"channel": "console", "to": f"user-{i}"}, "prompt": prompt}
        r = await client.post(f"{gp.base_url}/v1/sessions", json=body, headers=gp.headers)
        if r.status_code != 202:
            raise RuntimeError(f"session start: {r.status_code} {r.text[:200]}")

    async with trio.open_nursery() as nursery:
        for i, prompt in enumerate(prompts):
            nursery.start_soon(one, i, prompt)


def our_fake_pids(home: Path) -> set[int]:
    """Every live process whose command line names this home's events files (ours only)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if str(home).encode() in cmdline and b"fake_mcp" in cmdline and process_state(int(entry.name)) != "gone":
            found.add(int(entry.name))
    return found


async def restart_cell(calls: int, servers: int, drain_seconds: float) -> dict[str, Any]:
    with temp_home("bench-tools-") as home:
        write_config(home, tools_config(home, servers, drain_seconds, {"enabled": False}))
        gp = GatewayProcess(home)
        try:
            await trio.to_thread.run_sync(gp.start, 120.0)
            async with http.AsyncClient(timeout=120, trust_env=False) as client:
                before = await wait_servers(client, gp, servers, 1)
                old_pids = {s["pid"] for s in before}
                prompts = [f"/tool s{i % servers}__hang {{}}" for i in range(calls)]
                await start_sessions(client, gp, prompts)
                with trio.fail_after(120):
                    while sum(w["kind"] == "tool_call" for w in (await status(client, gp))["work"]) < calls:  # noqa: ASYNC110
                        await trio.sleep(0.1)
                t0 = time.perf_counter()
                r = await client.post(f"{gp.base_url}/v1/gateway/restart", json={"wait": True}, headers=gp.headers)
                wall = time.perf_counter() - t0
                report = r.json()["drain"]
                after = await wait_servers(client, gp, servers, 2)
            new_pids = {s["pid"] for s in after}
            told = sum(
                sum(e["event"] == "cancelled" for e in events(home / f"events-s{i}.jsonl")) for i in range(servers)
            )
            old_states = [process_state(pid) for pid in old_pids]
            strays = our_fake_pids(home) - new_pids
        finally:
            await trio.to_thread.run_sync(gp.stop)
        left_after_stop = our_fake_pids(home)
    return {
        "wall": wall,
        "overhead": wall - (drain_seconds if calls else 0.0),
        "waited": report["waitedSeconds"],
        "aborted": len(report["abortedWork"]),
        "old_gone": sum(s == "gone" for s in old_states),
        "zombies": sum(s == "zombie" for s in old_states),
        "strays": len(strays),
        "told": told,
        "left_after_stop": len(left_after_stop),
    }


async def stall_cell(calls: int, threshold: float, interval: float) -> list[float]:
    with temp_home("bench-tools-stall-") as home:
        stall = {"thresholdSeconds": threshold, "checkIntervalSeconds": interval}
        write_config(home, tools_config(home, 1, 5, stall))
        gp = GatewayProcess(home)
        try:
            await trio.to_thread.run_sync(gp.start, 120.0)
            async with http.AsyncClient(timeout=60, trust_env=False) as client:
                await wait_servers(client, gp, 1, 1)
                await start_sessions(client, gp, ["/tool s0__hang {}"] * calls)
                path = home / "events-s0.jsonl"
                with trio.fail_after(threshold * 4 + 60):
                    while sum(e["event"] == "cancelled" for e in events(path)) < calls:  # noqa: ASYNC110 (a file)
                        await trio.sleep(0.1)
            evs = events(path)
        finally:
            await trio.to_thread.run_sync(gp.stop)
    starts = sorted(e["t"] for e in evs if e["event"] == "call")
    cancels = sorted(e["t"] for e in evs if e["event"] == "cancelled")
    return [c - s - threshold for s, c in zip(starts, cancels, strict=True)]


async def per_call_cell(n: int) -> tuple[list[float], list[float]]:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    from trio_gateway.log import EventLog
    from trio_gateway.models.base import ToolCall
    from trio_gateway.policy import config as cfg
    from trio_gateway.tools.registry import build_toolbox, production_openers
    from trio_gateway.work.units import WorkRegistry

    direct: list[float] = []
    ours: list[float] = []
    config = cfg.parse({"tools": {"mcpServers": {"s0": {"command": FAKE}}}, "agents": {"main": {"tools": ["s0.*"]}}})
    log = EventLog([])
    box = build_toolbox(config, WorkRegistry(log), log, production_openers(os.environ, None))
    params = StdioServerParameters(command=FAKE[0], args=FAKE[1:])
    call = ToolCall("c", "s0__echo", {"text": "ping"})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.run)
        with trio.fail_after(60):
            while box.servers["s0"].state != "running":  # noqa: ASYNC110 (an attribute, no event)
                await trio.sleep(0.02)
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            # Interleaved, so both paths see the same machine load at the same moments.
            for _ in range(n):
                t0 = time.perf_counter()
                await session.call_tool("echo", {"text": "ping"})
                t1 = time.perf_counter()
                await box.call("bench", None, "main", call)
                t2 = time.perf_counter()
                direct.append(t1 - t0)
                ours.append(t2 - t1)
        nursery.cancel_scope.cancel()
    return direct, ours


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


async def main_async(args: argparse.Namespace) -> int:
    ok = True
    restart = await restart_cell(args.calls, args.servers, args.timeout)
    idle = await restart_cell(0, args.servers, args.timeout)
    rows = [
        [f"{args.calls} hung calls", f"{restart['wall']:.3f}", f"{restart['overhead']:.3f}", f"{restart['waited']:.3f}",
         restart["aborted"], restart["told"], f"{restart['old_gone']}/{args.servers}", restart["zombies"],
         restart["strays"], restart["left_after_stop"]],
        ["idle (reference)", f"{idle['wall']:.3f}", f"{idle['overhead']:.3f}", f"{idle['waited']:.3f}",
         idle["aborted"], idle["told"], f"{idle['old_gone']}/{args.servers}", idle["zombies"], idle["strays"],
         idle["left_after_stop"]],
    ]  # fmt: skip
    headers = ["restart", "wall s", "overhead s", "drain report s", "aborted", "told cancelled", "gen-1 servers gone",
               "zombies", "orphans", "left after stop"]  # fmt: skip
    table(headers, rows, title=f"1. restart, drain T = {args.timeout:g} s, {args.servers} stdio servers")
    met = (
        restart["overhead"] <= 0.5
        and restart["old_gone"] == args.servers
        and restart["zombies"] == restart["strays"] == restart["left_after_stop"] == 0
    )
    print(f"  target overhead <= 0.5 s, every server gone or restarted, no zombie, no orphan: {verdict(met)}\n")
    ok &= met

    lags = await stall_cell(args.stall_calls, 2.0, 0.5)
    table(
        ["calls", "p50 ms", "max ms"],
        [[len(lags), ms(percentile(lags, 50)), ms(max(lags))]],
        title="2. stall abort: server gets the call -> server told cancelled, minus threshold 2 s (interval 0.5 s)",
    )
    met = max(lags) <= 0.5
    print(f"  target <= one check interval (500 ms): {verdict(met)}\n")
    ok &= met

    direct, ours = await per_call_cell(args.per_call)
    rows = [
        ["SDK direct (reference)", ms(percentile(direct, 50)), ms(percentile(direct, 99))],
        ["through the gateway's tool path", ms(percentile(ours, 50)), ms(percentile(ours, 99))],
        ["overhead", ms(percentile(ours, 50) - percentile(direct, 50)),
         ms(percentile(ours, 99) - percentile(direct, 99))],
    ]  # fmt: skip
    table(["per call (echo)", "p50 ms", "p99 ms"], rows, title=f"3. per-call overhead, {args.per_call} calls each")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 calls across 4 servers, 5 stalls, 100 echo calls")
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--servers", type=int, default=None)
    parser.add_argument("--timeout", type=float, default=2.0, help="gateway.drain.timeoutSeconds (default 2)")
    args = parser.parse_args()
    args.calls = args.calls or (20 if args.quick else 100)
    args.servers = args.servers or (4 if args.quick else 10)
    args.stall_calls = 5 if args.quick else 20
    args.per_call = 100 if args.quick else 500
    banner("bench_tools", {"calls": args.calls, "servers": args.servers, "drain timeout": args.timeout,
                           "stall calls": args.stall_calls, "per-call N": args.per_call})  # fmt: skip
    sys.exit(trio.run(main_async, args))


if __name__ == "__main__":
    main()
