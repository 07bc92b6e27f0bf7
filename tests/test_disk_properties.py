"""Property: whatever bytes sit in the queue or the sessions folder, the gateway starts, each
bad file is quarantined (never deleted), and the next valid entry is delivered (issue 9)."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_properties import SHM

from trio_gateway.policy.entry import DeliveryEntry, Payload, entry_to_json
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.harness import Harness
from trio_gateway.sim.runtime import quick_config

WALL = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)  # the harness's wall clock base
CONFIG = quick_config(**{"gateway.stalledTaskDetection.enabled": False, "gateway.drain.timeoutSeconds": 5})
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD_ID = "01KV4MQYB07SBPY84ZQJQM28HR"
GOOD_ID = "01KV4MQYB07SBPY84ZQJQM28HS"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _entry_json(entry_id: str) -> dict[str, Any]:
    entry = DeliveryEntry(
        id=entry_id,
        kind="reply",
        channel="console",
        to="ops",
        account_id=None,
        agent_id="main",
        requester_origin=Origin("console", "ops"),
        payload=Payload(f"text of {entry_id}"),
        idempotency_key=entry_id,
        created_at=WALL,
        next_attempt_at=WALL,
    )
    return entry_to_json(entry)


def _mutated(base: dict[str, Any], key: str, value: Any) -> bytes:
    return json.dumps({**base, key: value}).encode()


@contextmanager
def _home(tmp_path: Path) -> Iterator[Path]:
    """One fresh home per example (the fixture is shared), on a memory filesystem when there
    is one: the property is about parsing, not durability (`test_properties.SHM`)."""
    with tempfile.TemporaryDirectory(dir=SHM or tmp_path) as home:
        yield Path(home)


async def _run(home: Path) -> Harness:
    """Start a gateway over `home`, wait until the valid entry is delivered, stop."""
    harness = Harness.build(home, CONFIG)
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        with trio.fail_after(60):
            await harness.wait_delivered(1)
        await harness.gateway.submit(agent_id="main", origin=Origin("console", "new"), prompt="next")
        with trio.fail_after(60):
            await harness.wait_delivered(2)
        assert harness.gateway.state.value == "running"
        harness.gateway.request_drain("stop")
    return harness


def _quarantined(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.iterdir() if p.is_file()] if folder.exists() else []


def _queue_case(home: Path, bad: bytes) -> Path:
    queue = home / "delivery-queue"
    queue.mkdir(parents=True)
    (queue / f"{BAD_ID}.json").write_bytes(bad)
    (queue / f"{GOOD_ID}.json").write_text(json.dumps(_entry_json(GOOD_ID)))
    return queue


async def _check_queue(home: Path, bad: bytes) -> None:
    queue = _queue_case(home, bad)
    harness = await _run(home)
    delivered = {m.key for m in harness.console_messages()}
    assert GOOD_ID in delivered
    # The bad file is either a whole entry after all (then delivered, or dead-lettered with the
    # reason when it names no channel that can send it, e.g. `"channel": ""`) or kept, byte for byte.
    assert BAD_ID in delivered or _dead_letter_reason(queue) or bad in _quarantined(queue / "quarantine")


def _dead_letter_reason(queue: Path) -> str | None:
    dead = queue / "failed" / f"{BAD_ID}.json"
    return json.loads(dead.read_text()).get("failedReason") if dead.is_file() else None


@SETTINGS
@given(key=st.sampled_from(sorted(_entry_json(BAD_ID))), value=json_values)
async def test_any_json_field_in_a_queue_entry_is_delivered_or_quarantined(
    tmp_path: Path, autojump_clock: trio.abc.Clock, key: str, value: Any
) -> None:
    with _home(tmp_path) as home:
        await _check_queue(home, _mutated(_entry_json(BAD_ID), key, value))


def _session_json() -> dict[str, Any]:
    origin = {"channel": "console", "to": "ops", "accountId": None, "deliveryChannel": None}
    return {
        "id": "s-9-9",
        "agent": "main",
        "origin": origin,
        "createdAt": WALL.isoformat(),
        "history": [],
        "turns": [],
    }


async def _check_sessions(home: Path, bad: bytes) -> None:
    sessions = home / "sessions"
    sessions.mkdir(parents=True)
    (sessions / "s-9-9.json").write_bytes(bad)
    _queue_case(home, json.dumps(_entry_json(BAD_ID)).encode())  # a valid entry to deliver too
    harness = await _run(home)
    assert "s-9-9" in harness.gateway.sessions or bad in _quarantined(sessions / "quarantine")


@pytest.mark.parametrize("check", [_check_queue, _check_sessions], ids=["queue-entry", "session-file"])
@SETTINGS
@given(bad=st.binary(max_size=300))
async def test_any_bytes_on_disk_are_quarantined(
    tmp_path: Path, autojump_clock: trio.abc.Clock, check: Callable[[Path, bytes], Awaitable[None]], bad: bytes
) -> None:
    with _home(tmp_path) as home:
        await check(home, bad)


@SETTINGS
@given(key=st.sampled_from(sorted(_session_json())), value=json_values)
async def test_any_json_field_in_a_session_file_loads_or_is_quarantined(
    tmp_path: Path, autojump_clock: trio.abc.Clock, key: str, value: Any
) -> None:
    with _home(tmp_path) as home:
        await _check_sessions(home, _mutated(_session_json(), key, value))
