"""pytest fixtures that run a whole gateway in-process on trio's virtual clock (SPEC 10).

    async def test_reply_reaches_the_requester(gateway, deliveries):
        await gateway.submit(agent_id="main", origin=Origin("console", "me"), prompt="hi")
        [reply] = await deliveries.wait_delivered(1, "console")
        assert reply.to == "me"

Fixtures: `gateway` (a running `Gateway`, generation 1 accepting work), `fake_model` (the model
upstream: prompt directives `/stall`, `/slow N T`, `/spawn AGENT TASK`, `/fail`, plus
`.spec`, `.kill_upstream()`), `fake_channels` (`sim.fake_channels.FakeChannels`: the
HTTP-level server of every platform's send API behind the real channel adapters; steer it with
`.reject()`, `.fail()`, `.rate_limit()`, `.delay()`, `.accept()`, read `.requests_to()`,
`.delivered()`), `fake_mcp` (`sim.fake_mcp.FakeMcpServers`: every MCP server the config
names, served in-process and connected before the test starts; read `fake_mcp["files"].calls` and
`.cancelled`), `deliveries` (every send the delivery worker made, with its kind and its
classified outcome: `.attempts`, `.delivered()`, `.wait_delivered()`), `gateway_log` (the
events, with virtual times), `gateway_harness` (all of them), and `gateway_config` to override
for a different setup. Accounts in the config need only `baseUrl` (any: it is never dialled)
and the names of their secrets (`tokenEnv`, Feishu `appId` + `appSecretEnv`); the harness
makes up their values (`sim.harness.fake_account(channel)` writes such an account).

A test that uses `gateway` runs on `MockClock(autojump_threshold=0)` without asking for
`autojump_clock` itself: sleeps and deadlines cost no wall time. Needs pytest-trio with
`trio_mode = true` (or the `trio` marker).

`no_file_io_on_the_loop` (opt in: `pytest.mark.usefixtures("no_file_io_on_the_loop")`) fails a
test whose gateway did file I/O inside a Trio task step (`testing/io_guard.py`): caught by
what was called, never by how long it took.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from trio_gateway.log import MemorySink
from trio_gateway.policy.config import Config
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.fake_mcp import FakeMcpServers
from trio_gateway.sim.harness import DeliveryTap, Harness, HarnessModel
from trio_gateway.sim.runtime import quick_config
from trio_gateway.testing.io_guard import guarded

# How long the fixture's teardown may take to stop the gateway (virtual seconds: free).
STOP_TIMEOUT_SECONDS = 30.0


def run_on_virtual_clock(fn: Callable[[], Any], *, clock: trio.abc.Clock | None = None, **kwargs: Any) -> Any:
    """pytest-trio's runner, with an autojump MockClock unless the test brought its own."""
    return trio.run(fn, clock=clock or trio.testing.MockClock(autojump_threshold=0), **kwargs)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # pytest-trio picks the clock from the test's own arguments only, so a fixture cannot ask
    # for one; mark the tests that use the gateway to run on a virtual clock instead.
    for item in items:
        marker = item.get_closest_marker("trio")
        plain = marker is None or marker.kwargs.get("run", trio.run) is trio.run
        if "gateway_harness" in getattr(item, "fixturenames", ()) and plain:
            # Prepended: pytest-trio's trio_mode appends its own marker, and the first one wins
            # whichever plugin's hook runs first (entry point or conftest order).
            item.add_marker(pytest.mark.trio(run=run_on_virtual_clock), append=False)


@pytest.fixture
def gateway_config() -> Config:
    """The built-in defaults (echo model, `console` channel). Override in your conftest."""
    return quick_config()


@pytest.fixture
def fake_model() -> HarnessModel:
    return HarnessModel()


@pytest.fixture
def fake_channels() -> FakeChannels:
    return FakeChannels()


@pytest.fixture
def fake_mcp() -> FakeMcpServers:
    return FakeMcpServers()


@pytest.fixture
async def gateway_harness(
    tmp_path: Path,
    gateway_config: Config,
    fake_model: HarnessModel,
    fake_channels: FakeChannels,
    fake_mcp: FakeMcpServers,
    nursery: Any,
) -> AsyncIterator[Harness]:
    _require_virtual_clock()
    harness = Harness.build(tmp_path / "home", gateway_config, model=fake_model, channels=fake_channels, mcp=fake_mcp)
    await nursery.start(harness.gateway.serve)
    if harness.gateway.tools is not None:
        await harness.gateway.tools.started()  # so a test's first prompt is offered the tools
    yield harness
    await _stop(harness.gateway)


@pytest.fixture
def gateway(gateway_harness: Harness) -> Gateway:
    return gateway_harness.gateway


@pytest.fixture
def deliveries(gateway_harness: Harness) -> DeliveryTap:
    return gateway_harness.tap


@pytest.fixture
def gateway_log(gateway_harness: Harness) -> MemorySink:
    return gateway_harness.sink


def _require_virtual_clock() -> None:
    if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        raise RuntimeError(
            "the gateway fixtures run on a virtual clock: use them in a trio test (pytest-trio), "
            "with no trio marker of your own or with autojump_clock"
        )


async def _stop(gw: Gateway) -> None:
    if gw.state.value == "stopped":
        return
    with trio.move_on_after(STOP_TIMEOUT_SECONDS):
        gw.request_drain("stop", force=True)
        await gw.state.wait_value("stopped")


@pytest.fixture
def no_file_io_on_the_loop() -> Iterator[None]:
    """Fails the test whose gateway did file I/O on the Trio thread (`testing/io_guard.py`).
    Opt in per test or module: `pytest.mark.usefixtures("no_file_io_on_the_loop")`."""
    with guarded() as guard:
        yield
    if guard.found:
        pytest.fail("file I/O on the Trio thread:\n  " + "\n  ".join(guard.found), pytrace=False)
