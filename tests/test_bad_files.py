"""Files on disk that are wrong: quarantined (never deleted), never a crash, never followed
outside the home (issue 9, items 7 and 10)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio
from test_channels import entry

from trio_gateway.channels.console import ConsoleChannel
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.runtime import build_gateway, quick_config
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.sessions import SessionStore

CONSOLE = Origin("console", "ops", None)


def _session_json(session_id: str) -> dict[str, object]:
    return {
        "id": session_id,
        "agent": "main",
        "origin": {"channel": "console", "to": "ops", "accountId": None, "deliveryChannel": None},
        "createdAt": "2026-06-15T03:21:00+00:00",
        "history": [],
        "turns": [
            {
                "id": f"turn-{session_id}-1",
                "prompt": "hi",
                "origin": {"channel": "console", "to": "ops", "accountId": None, "deliveryChannel": None},
                "kind": "inbound",
                "status": "running",
                "resumes": 0,
                "acceptedAt": "2026-06-15T03:21:00+00:00",
            }
        ],
    }


async def test_a_session_id_that_is_a_path_is_quarantined_not_followed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    home = tmp_path / "home"
    sessions = home / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "s-1-1.json").write_text(json.dumps(_session_json("../../EVIL")))
    (sessions / "s-1-2.json").write_text(json.dumps(_session_json("s-1-2")))
    gateway, sink = build_gateway(home, quick_config(**{"gateway.stalledTaskDetection.enabled": False}))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await trio.sleep(1)
        gateway.request_drain("stop")
    assert not (tmp_path / "EVIL.json").exists()
    assert [p.name for p in (sessions / "quarantine").iterdir()] == [f"s-1-1.json.{os.getpid()}"]
    assert "s-1-2" in gateway.sessions
    assert "../../EVIL" not in gateway.sessions
    assert any("not a plain name" in str(e.fields.get("error")) for e in sink.tagged("SESSIONS"))


async def test_a_session_file_whose_id_disagrees_with_its_name_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "s-1-1.json").write_text(json.dumps(_session_json("s-9-9")))
    (tmp_path / "s-1-3.json").mkdir()  # a directory named like a session
    sink = MemorySink()
    records = await SessionStore(tmp_path, inline, EventLog([sink])).load_all()
    assert records == []
    assert len(list((tmp_path / "quarantine").iterdir())) == 2


async def test_console_dedupes_by_idempotency_key_not_entry_id(tmp_path: Path) -> None:
    path = tmp_path / "console.jsonl"
    # A turn re-run after a SIGKILL enqueues its reply again: a new entry id, the same key.
    assert (await ConsoleChannel(path, inline).send(entry("console", "me", key="turn-s-1-1-1", entry_id="e1"))).ok
    assert (await ConsoleChannel(path, inline).send(entry("console", "me", key="turn-s-1-1-1", entry_id="e2"))).ok
    assert (await ConsoleChannel(path, inline).send(entry("console", "me", key="turn-s-1-1-2", entry_id="e3"))).ok
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["id"] for line in lines] == ["e1", "e3"]


async def test_turn_ids_are_not_reused_by_a_new_process(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """A turn id is its reply's idempotency key, which the console dedupes by: a reused id
    after a restart of the process would swallow a new turn's reply."""
    config = quick_config(**{"gateway.stalledTaskDetection.enabled": False})
    ids = []
    for _ in range(2):  # two processes over one home
        gateway, _ = build_gateway(tmp_path, config)
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            ids.append((await gateway.submit(agent_id="main", origin=CONSOLE, prompt="hi"))[1])
            gateway.request_drain("stop")
    assert ids == ["turn-s-1-1-1", "turn-s-1-1-2"]
