"""`/metrics` as Prometheus's own tools read it (issue 24): prometheus-client's parser finds no
untyped family, and `promtool check metrics` (Debian's `prometheus` package) passes the text
where promtool is installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_gateway.http import metrics
from trio_gateway.policy import config as cfg
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import build_gateway
from trio_gateway.tools.registry import ToolBox

pytestmark = pytest.mark.interop


def with_two_mcp_servers(gateway: Gateway) -> None:
    """Two MCP servers' state in the scrape: one up, one restarting after two restarts."""
    from trio_gateway.tools.mcp import McpServer

    box = ToolBox(gateway.config, gateway.registry, gateway.log)

    async def never() -> None:  # an opener the test never calls: only the state is scraped
        raise AssertionError

    for name, state, restarts in (("files", "running", 0), ("search", "restarting", 2)):
        box.servers[name] = McpServer(name, never, gateway.log, 1 << 20, state=state, restarts=restarts)  # type: ignore[arg-type]
    box.outcomes[("mcp", "ok")] += 3
    gateway.tools = box


async def scrape(tmp_path: Path) -> str:
    gateway, _ = build_gateway(tmp_path, cfg.Config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        with_two_mcp_servers(gateway)
        text = metrics.render(gateway)
        gateway.request_drain("stop", force=True)
    return text


async def test_every_family_is_typed_and_the_mcp_families_hold_their_own_samples(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    families = {f.name: f for f in text_string_to_metric_families(await scrape(tmp_path))}
    untyped = sorted(name for name, f in families.items() if f.type == "unknown")
    assert untyped == []
    up, restarts = families["trio_gateway_mcp_server_up"], families["trio_gateway_mcp_server_restarts"]
    assert (up.type, restarts.type) == ("gauge", "gauge")
    assert {s.labels["server"]: s.value for s in up.samples} == {"files": 1, "search": 0}
    assert {s.labels["server"]: s.value for s in restarts.samples} == {"files": 0, "search": 2}


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package prometheus)")
async def test_promtool_check_metrics_passes(tmp_path: Path) -> None:
    text = await scrape(tmp_path)
    # promtool's exit status is what counts; lint warnings (none expected) would print too.
    with trio.fail_after(60):
        result = await trio.run_process(["promtool", "check", "metrics"], stdin=text.encode(), capture_stdout=True,
                                        capture_stderr=True, check=False)  # fmt: skip
    said = (result.stdout + result.stderr).decode()
    assert (result.returncode, said) == (0, "")
