"""`usage.json` (storage/usage_file.py): an agent's day spend survives a process restart, so
`maxTokensPerDay` holds across deploys; a bad file is quarantined, not trusted nor deleted."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path

import trio

from trio_gateway.app.assemble import _model_ledger
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.models import EchoModel
from trio_gateway.models.base import Usage
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.usage import ModelLedger
from trio_gateway.sim.runtime import Notice, build_gateway, quick_config
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.home import Home
from trio_gateway.storage.usage_file import MAX_USAGE_FILE_BYTES, UsageFile, read_day

DAY = dt.date(2026, 6, 15)  # the sim gateway's wall clock starts on this day


def ledger_on(path: Path, log: EventLog) -> ModelLedger:
    return ModelLedger.resumed(DAY, read_day(path, DAY, log), UsageFile(path, inline, log).save)


async def test_a_new_process_starts_from_the_days_spend(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    path, log = tmp_path / "usage.json", EventLog([MemorySink()])
    config = quick_config(**{"agents.main.maxTokensPerDay": 20})
    answers: list[str] = []
    for run in range(2):  # two processes, one after the other, on the same home
        notices: list[Notice] = []
        gateway, _ = build_gateway(tmp_path / "home", config, notices=notices, model=EchoModel())
        gateway.deps.model_ledger = ledger_on(path, log)
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            prompt = "a fairly long question that costs some tokens to answer" if run == 0 else "hi"
            await gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt=prompt)
            await gateway.busy.wait_value(0)
            gateway.request_drain("stop")
        answers += [n.text for n in notices]
    saved = json.loads(path.read_text())
    assert saved["day"] == "2026-06-15"
    assert saved["agents"]["main"] >= 20
    assert answers[0].startswith("a fairly long question")
    assert "has used its 20 tokens for today" in answers[1]


async def test_another_days_file_starts_from_zero_and_a_bad_one_is_quarantined(tmp_path: Path) -> None:
    path, sink = tmp_path / "usage.json", MemorySink()
    path.write_text(json.dumps({"day": "2026-06-14", "agents": {"main": 99}}))
    assert read_day(path, DAY, EventLog([sink])) == {}
    assert path.exists()  # yesterday's file is fine, only stale
    path.write_text("{not json")
    assert read_day(path, DAY, EventLog([sink])) == {}
    assert not path.exists()
    assert (tmp_path / "quarantine" / "usage.json").read_text() == "{not json"
    assert sink.tagged("QUARANTINE")


async def test_saves_coalesce_while_one_is_on_disk(tmp_path: Path) -> None:
    path, log = tmp_path / "usage.json", EventLog([MemorySink()])
    release, writes = trio.Event(), []

    async def slow_runner(fn: object) -> None:
        writes.append(1)
        await release.wait()
        assert callable(fn)
        fn()

    ledger = ModelLedger(save=UsageFile(path, slow_runner, log).save)
    async with trio.open_nursery() as nursery:
        for i in range(5):
            ledger.record(f"s{i}", "main", "default", Usage(input=i + 1), DAY)
            nursery.start_soon(ledger.persist, DAY)
            await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert len(writes) == 2  # the first call's write, then one more round for the four others
    assert json.loads(path.read_text()) == {"day": "2026-06-15", "agents": {"main": 15}}


def test_the_production_ledger_starts_from_the_homes_file(tmp_path: Path) -> None:
    home = Home(tmp_path)
    today = dt.datetime.now(dt.UTC).date()
    home.usage_path.write_text(json.dumps({"day": today.isoformat(), "agents": {"main": 7}}))
    ledger = _model_ledger(home, inline, EventLog([MemorySink()]))
    assert ledger.spent_today("main", today) == 7
    assert ledger.save is not None


async def test_a_writers_own_call_is_not_held_by_later_saves(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """The caller whose save starts a write waits for at most two writes, however many calls
    keep answering meanwhile: before, it went round once more for each call that came in while
    a write was on disk, so under steady load one turn's reply waited for everyone's tokens."""
    path, log = tmp_path / "usage.json", EventLog([MemorySink()])

    async def slow_runner(fn: object) -> None:
        await trio.sleep(1.0)  # a write takes 1 s of virtual time
        assert callable(fn)
        fn()

    ledger = ModelLedger(save=UsageFile(path, slow_runner, log).save)
    returned_at: list[float] = []

    async def first_call() -> None:
        ledger.record("s0", "main", "default", Usage(input=1), DAY)
        await ledger.persist(DAY)
        returned_at.append(trio.current_time())

    async def steady_load() -> None:
        for i in range(1, 100):  # an answered call every 0.5 s for 50 s
            await trio.sleep(0.5)
            ledger.record(f"s{i}", "main", "default", Usage(input=1), DAY)
            nursery.start_soon(ledger.persist, DAY)

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(first_call)
            nursery.start_soon(steady_load)
    assert returned_at
    assert returned_at[0] - start <= 2.0
    # Every call's tokens reached the file once the load stopped.
    assert json.loads(path.read_text()) == {"day": "2026-06-15", "agents": {"main": 100}}


def test_a_usage_file_that_is_not_a_regular_file_is_quarantined(tmp_path: Path) -> None:
    """Issue 25's bounded reads hold for usage.json too: a FIFO there (nobody writing) no longer
    freezes the start in open(), and a huge file is not read into memory."""
    sink = MemorySink()
    fifo = tmp_path / "usage.json"
    os.mkfifo(fifo)
    got: list[dict[str, int]] = []
    reader = threading.Thread(target=lambda: got.append(read_day(fifo, DAY, EventLog([sink]))), daemon=True)
    reader.start()
    reader.join(timeout=30)  # microseconds when fixed; blocked in open() for ever when not
    assert got == [{}]
    assert (tmp_path / "quarantine" / "usage.json").exists()
    big = tmp_path / "big" / "usage.json"
    big.parent.mkdir()
    big.write_bytes(b" " * (MAX_USAGE_FILE_BYTES + 1))
    assert read_day(big, DAY, EventLog([sink])) == {}
    assert (big.parent / "quarantine" / "usage.json").exists()
