"""The gateway's side of sessions moving between cluster nodes, on the MockClock (no database:
the store's verdicts are what the PostgreSQL store hands to these two methods)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_gateway.policy.origin import Origin
from trio_gateway.sim.runtime import Notice, build_gateway, quick_config
from trio_gateway.storage.sessions import SessionRecord, TurnRecord

CONSOLE = Origin("console", "ops", None)
NO_STALL = {"gateway.stalledTaskDetection.enabled": False}


async def test_a_session_owned_elsewhere_is_cancelled_here_and_tells_nobody(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    notices: list[Notice] = []
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        sid, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="/stall")
        await trio.sleep(1)
        assert gateway.busy.value == 1
        gateway.forget_session(sid)  # a write was refused: another node owns it
        await trio.sleep(1)
        assert gateway.busy.value == 0  # its work here was cancelled
        assert sid not in gateway.sessions
        assert notices == []  # the owner answers the requester, not this node
        assert [e.message for e in sink.tagged("CLUSTER")] == [
            "Session owned by another node; its work here is cancelled"
        ]
        # The origin's next message gets a session of its own here.
        other, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hello")
        assert other != sid
        gateway.request_drain("stop")


async def test_an_adopted_sessions_turns_resume_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    notices: list[Notice] = []
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        record = SessionRecord("s-peer-1-1", "main", CONSOLE, gateway.wall.now())  # type: ignore[union-attr]
        record.turns = [TurnRecord("turn-s-peer-1-1-1", "left by a peer", CONSOLE, status="running")]
        record.seq = 1
        await gateway.adopt_sessions([record])
        await gateway.adopt_sessions([record])  # found twice by the sweep: still once
        await trio.sleep(5)
        assert [n.text for n in notices] == ["echo: left by a peer"]  # the turn ran, once
        assert gateway.sessions["s-peer-1-1"].record.turns == []
        _, turn_id = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="next")
        assert turn_id == "turn-s-peer-1-1-2"  # numbering goes on from the adopted record
        gateway.request_drain("stop")
    assert [e.message for e in sink.tagged("RESTART") if "Resuming" in e.message] == ["Resuming interrupted turn"]


async def test_an_adopted_wechat_session_is_found_by_its_conversations_next_message(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """An origin's context token (WeChat's) changes per message; the session is the
    conversation without it, whether the session was started here, read back at start-up or
    adopted from a peer (adopting keyed it by the whole origin: the next message started a
    second session for the same conversation)."""
    config = quick_config(**NO_STALL)
    gateway, _ = build_gateway(tmp_path, config)
    first = Origin("console", "ops", None, context_token="ctx-1")
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        record = SessionRecord("s-peer-1-1", "main", first, gateway.wall.now())  # type: ignore[union-attr]
        await gateway.adopt_sessions([record])
        sid, _ = await gateway.submit(agent_id="main", origin=attrs.evolve(first, context_token="ctx-2"), prompt="hi")
        assert sid == "s-peer-1-1"
        gateway.forget_session(sid)
        other, _ = await gateway.submit(agent_id="main", origin=first, prompt="hi again")
        assert other != sid  # forgotten under the same key it was found by
        gateway.request_drain("stop")


async def test_adopting_a_session_held_here_from_an_earlier_ownership_takes_the_databases_copy(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """This node held the session, another node owned it since (this one was judged dead while
    stopped) and wrote to it, now this node adopts it back: the adopted record, with the other
    node's history and pending turns, replaces the stale copy (which used to be kept, and its
    next write dropped the turns handed to the session meanwhile)."""
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        sid, _ = await gateway.submit(agent_id="main", origin=CONSOLE, prompt="one")
        await trio.sleep(1)
        newer = SessionRecord(sid, "main", CONSOLE, gateway.wall.now())  # type: ignore[union-attr]
        newer.history = [{"role": "user", "content": "elsewhere"}, {"role": "assistant", "content": "ok"}]
        newer.turns = [TurnRecord(f"turn-{sid}-abc", "handed meanwhile", CONSOLE)]
        await gateway.adopt_sessions([newer])
        await trio.sleep(5)
        assert [n.text for n in notices] == ["echo: one", "echo: handed meanwhile"]
        assert gateway.sessions[sid].record.history[:2] == newer.history[:2]
        gateway.request_drain("stop")


async def test_a_resume_skips_a_session_whose_write_was_refused(
    tmp_path: Path, autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node back from a stall (SIGSTOP) resumes turns of sessions adopted before it: one
    whose resume write is refused (a peer owns it now) must not run here; the others do."""
    notices: list[Notice] = []
    gateway, sink = build_gateway(tmp_path, quick_config(**NO_STALL), notices=notices)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert gateway.current is not None
        store_type = type(gateway.current.runtime.store)
        save = store_type.save

        async def refusing(store: Any, record: SessionRecord) -> None:
            if record.id == "s-peer-1-1":  # as the PostgreSQL store does on a refused write
                gateway.forget_session(record.id)
                return
            await save(store, record)

        monkeypatch.setattr(store_type, "save", refusing)
        adopted = []
        for n, who in enumerate(["lost", "kept"], 1):
            origin = Origin("console", who, None)
            record = SessionRecord(f"s-peer-1-{n}", "main", origin, gateway.wall.now())  # type: ignore[union-attr]
            record.turns = [TurnRecord(f"turn-s-peer-1-{n}-1", f"for {who}", origin, status="running")]
            record.seq = 1
            adopted.append(record)
        await gateway.adopt_sessions(adopted)
        await trio.sleep(5)
        assert [n.text for n in notices] == ["echo: for kept"]
        assert "s-peer-1-1" not in gateway.sessions
        gateway.request_drain("stop")
    assert [(e.message, e.fields.get("sessionId")) for e in sink.tagged("RESTART") if "turn" in e.message] == [
        ("Interrupted turn left to the session's new owner", "s-peer-1-1"),
        ("Resuming interrupted turn", "s-peer-1-2"),
    ]
