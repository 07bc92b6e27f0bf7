"""`POST /v1/sessions/{id}/turns/{turnId}/wait` (for `session start --wait`), in-process on
MockClock: the reply, a failure notice, a pending answer at the timeout, a turn that only
ends in the next generation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from test_ui import TOKEN, Ui, call

from trio_gateway.http.app import GatewayApp
from trio_gateway.policy import config as cfg
from trio_gateway.sim.runtime import build_gateway

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def ui(tmp_path: Path, autojump_clock: trio.abc.Clock) -> AsyncIterator[Ui]:
    config = cfg.parse({"gateway": {"drain": {"timeoutSeconds": 10}, "stalledTaskDetection": {"enabled": False}}})
    gateway, _ = build_gateway(tmp_path, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        yield Ui(gateway, GatewayApp(gateway, TOKEN, {}))
        gateway.request_drain("stop", force=True)


async def start(ui: Ui, prompt: str) -> tuple[str, str]:
    body = {"agent": "main", "origin": {"channel": "console", "to": "ops"}, "prompt": prompt}
    reply = await call(ui.app, "POST", "/v1/sessions", body, **AUTH)
    assert reply.status == 202
    return reply.json["sessionId"], reply.json["turnId"]


async def wait(ui: Ui, session: str, turn: str, seconds: float | None = None) -> Any:
    body = {} if seconds is None else {"timeoutSeconds": seconds}
    reply = await call(ui.app, "POST", f"/v1/sessions/{session}/turns/{turn}/wait", body, **AUTH)
    assert reply.status == 200, reply.body
    return reply.json


async def test_wait_answers_with_the_reply(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    session, turn = await start(ui, "hello there")
    outcome = await wait(ui, session, turn)
    assert outcome["state"] == "done"
    assert outcome["ok"] is True
    assert "hello there" in outcome["text"]


async def test_wait_answers_with_the_failure_notice(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    session, turn = await start(ui, "/fail")
    outcome = await wait(ui, session, turn)
    assert (outcome["state"], outcome["ok"]) == ("done", False)
    assert outcome["text"].startswith("Sorry, this request failed")


async def test_wait_is_pending_at_its_timeout_then_done_after_a_restart(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    session, turn = await start(ui, "/stall")
    before = trio.current_time()
    assert await wait(ui, session, turn, seconds=5) == {"state": "pending"}
    assert trio.current_time() - before == pytest.approx(5)
    # A forced restart cuts the stalled turn; generation 2 resumes it (and it stalls again);
    # the operator aborts it: the waiter learns how it ended, across the restart.
    ui.gateway.request_drain("restart", force=True)
    await ui.gateway.state.wait_value(lambda s: s == "running" and ui.gateway.generation_number == 2)
    await trio.sleep(1)
    assert ui.gateway.abort_session(session)
    outcome = await wait(ui, session, turn)
    assert (outcome["state"], outcome["ok"]) == ("done", False)
    assert outcome["text"] == "Sorry, this request was aborted by the operator."


async def test_wait_on_an_unknown_session_is_404_and_bad_timeouts_400(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    missing = await call(ui.app, "POST", "/v1/sessions/nope/turns/t/wait", {}, **AUTH)
    assert missing.status == 404
    session, turn = await start(ui, "hi")
    bad = await call(ui.app, "POST", f"/v1/sessions/{session}/turns/{turn}/wait", {"timeoutSeconds": 1e9}, **AUTH)
    assert (bad.status, bad.json["error"]) == (400, "BadRequestError")
