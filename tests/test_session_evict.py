"""Idle sessions leave memory and come back from disk with their history (issue 9)."""

from __future__ import annotations

import pytest
import trio

from trio_gateway.http import views
from trio_gateway.policy.config import Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.harness import DeliveryTap
from trio_gateway.sim.runtime import quick_config

ME = Origin("console", "me")


@pytest.fixture
def gateway_config() -> Config:
    return quick_config(**{"gateway.sessionEvictAfterSeconds": 60})


async def test_an_idle_session_leaves_memory_and_comes_back_with_its_history(
    gateway: Gateway, deliveries: DeliveryTap
) -> None:
    session_id, first = await gateway.submit(agent_id="main", origin=ME, prompt="one")
    await deliveries.wait_delivered(1, "console")
    await trio.sleep(30)
    assert session_id in gateway.sessions  # not idle long enough yet
    await trio.sleep(60)
    assert gateway.sessions == {}
    assert await gateway.submit(agent_id="main", origin=ME, prompt="two") != (session_id, first)
    again, second = gateway.sessions[session_id].id, gateway.sessions[session_id].record.turns[-1].id
    assert again == session_id
    assert second != first  # a turn id is never handed out twice: deliveries are keyed by it
    [_, reply] = await deliveries.wait_delivered(2, "console")
    assert reply.to == "me"
    history = [m["content"] for m in gateway.sessions[session_id].record.history]
    assert history[:2] == ["one", "echo: one"]
    assert history[2] == "two"
    assert gateway.abort_session(session_id) is False
    await trio.sleep(120)
    assert gateway.abort_session(session_id) is False  # evicted: idle, nothing to abort


async def test_a_busy_session_is_never_evicted(gateway: Gateway) -> None:
    session_id, _ = await gateway.submit(agent_id="main", origin=ME, prompt="/stall")
    # Past the eviction bound (60 s, swept every 15 s), short of the stall threshold (120 s).
    await trio.sleep(100)
    assert gateway.sessions[session_id].busy
    assert [w["sessionId"] for w in views.status(gateway)["work"]] == [session_id]


async def test_evicted_sessions_keep_their_ids_for_new_sessions(gateway: Gateway, deliveries: DeliveryTap) -> None:
    first, _ = await gateway.submit(agent_id="main", origin=ME, prompt="one")
    await deliveries.wait_delivered(1, "console")
    await trio.sleep(120)
    assert first not in gateway.sessions
    other, _ = await gateway.submit(agent_id="main", origin=Origin("console", "you"), prompt="two")
    assert other != first
