"""The pytest fixtures with MCP servers, as a user would write them: override `gateway_config`,
prompt `/tool`, read the fake server through `fake_mcp`."""

from __future__ import annotations

import pytest

from trio_gateway.policy import config as cfg
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_mcp import FakeMcpServers
from trio_gateway.sim.harness import Harness

ME = Origin("console", "me")


@pytest.fixture
def gateway_config() -> cfg.Config:
    return cfg.parse(
        {
            "gateway": {"stalledTaskDetection": {"thresholdSeconds": 30, "checkIntervalSeconds": 1}},
            "tools": {"mcpServers": {"files": {"command": ["served-in-process-by-the-fixture"]}}},
            "agents": {"main": {"tools": ["files.echo", "files.hang"]}},
        }
    )


async def test_an_agent_calls_a_tool_and_a_silent_one_is_aborted(
    gateway: Gateway, gateway_harness: Harness, fake_mcp: FakeMcpServers
) -> None:
    assert gateway.tools is not None
    await gateway.submit(agent_id="main", origin=ME, prompt='/tool files__echo {"text": "hi"}')
    [reply] = await gateway_harness.wait_delivered(1, "console")
    assert gateway_harness.messages("console")[0].text == "tool files__echo: hi"
    await gateway.submit(agent_id="main", origin=ME, prompt="/tool files__hang {}")
    await gateway_harness.wait_delivered(2, "console")
    assert "aborted" in gateway_harness.messages("console")[1].text
    assert fake_mcp["files"].calls == ["echo", "hang"]
    assert len(fake_mcp["files"].cancelled) == 1
    assert reply.outcome == "ok"
