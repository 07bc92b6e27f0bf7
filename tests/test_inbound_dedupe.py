"""The inbound dedupe window (SPEC 11): each conversation remembers the platform ids of its
last 256 messages, in its session file, so a message read again after a crash (a whole poll
batch of up to 100, a webhook's retries) is recognised; older ids are forgotten, so the file
stays bounded."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from trio_gateway.log import EventLog
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.sessions import SessionRecord, SessionStore

WINDOW = 256


def record_heard(ids: list[str]) -> SessionRecord:
    record = SessionRecord("s-1-1", "main", None, dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC))
    for inbound_id in ids:
        record.remember_inbound(inbound_id)
    return record


def test_a_conversation_remembers_exactly_its_last_256_message_ids() -> None:
    ids = [f"m{i}" for i in range(WINDOW + 44)]
    record = record_heard(ids)
    assert record.inbound_ids == ids[-WINDOW:]
    assert record.heard(ids[-WINDOW])  # the oldest still in the window
    assert not record.heard(ids[-WINDOW - 1])  # the newest forgotten


async def test_the_window_survives_the_session_file(tmp_path: Path) -> None:
    ids = [f"m{i}" for i in range(WINDOW + 1)]
    store = SessionStore(tmp_path, inline, EventLog())
    await store.save(record_heard(ids))
    loaded = await store.load("s-1-1")
    assert loaded is not None
    assert loaded.inbound_ids == ids[1:]
    assert all(loaded.heard(i) for i in ids[1:])
