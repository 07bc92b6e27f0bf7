"""Special files where regular ones belong (issue 25, finding 6): a FIFO, `/dev/zero` behind a
symlink, a directory, a file past its cap. Each is refused before it can block or fill memory."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from pathlib import Path

import pytest
import trio

from trio_gateway.channels.registry import load_config
from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.sim.runtime import build_gateway, quick_config
from trio_gateway.storage.atomic import NotARegularFileError, in_thread, read_regular
from trio_gateway.storage.sessions import SessionRecord, SessionStore


def test_a_regular_file_within_its_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_bytes(b"{}")
    assert read_regular(path, 2) == b"{}"


def test_a_fifo_nobody_writes_is_refused_at_once(tmp_path: Path) -> None:
    """Before: opening it waited for a writer forever (a reload froze /healthz)."""
    path = tmp_path / "x.json"
    os.mkfifo(path)
    with pytest.raises(NotARegularFileError, match=re.escape("x.json is not a regular file (a FIFO)")):
        read_regular(path, 1024)


def test_dev_zero_behind_a_symlink_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    """Before: read until memory ran out (2.7 GB in 1 s)."""
    path = tmp_path / "x.json"
    path.symlink_to("/dev/zero")
    with pytest.raises(NotARegularFileError, match="a character device"):
        read_regular(path, 1024)


def test_a_directory_and_a_file_past_its_cap_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.json").mkdir()
    with pytest.raises(NotARegularFileError, match=re.escape("d.json is not a regular file (a directory)")):
        read_regular(tmp_path / "d.json", 1024)
    (tmp_path / "big.json").write_bytes(b"x" * 1025)
    with pytest.raises(NotARegularFileError, match="larger than 1024 bytes"):
        read_regular(tmp_path / "big.json", 1024)


def test_a_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "gone.json", 1024)


async def test_a_reload_of_a_gateway_json_that_is_a_fifo_keeps_the_running_config(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Before: the reload opened the FIFO on the Trio thread and waited for a writer forever
    (/healthz froze). Now it is read off the loop and refused at once: the restart completes
    on the running config and says why."""
    config_path = tmp_path / "gateway.json"
    os.mkfifo(config_path)
    gateway, _ = build_gateway(tmp_path / "home", quick_config(), load_config=lambda: load_config(config_path))
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        request = gateway.request_drain("restart")
        with trio.fail_after(60):
            await request.done.wait()
        gateway.request_drain("stop", force=True)
    assert request.report is not None
    assert request.report.config_rejected == f"{config_path}: cannot read: gateway.json is not a regular file (a FIFO)"


def test_a_fifo_and_dev_zero_among_the_sessions_are_quarantined_and_the_good_one_read(tmp_path: Path) -> None:
    store = SessionStore(tmp_path, in_thread, EventLog())
    good = SessionRecord("s-1-3", "main", None, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    (tmp_path / "s-1-3.json").write_text(json.dumps(codec.unstructure(good)))
    os.mkfifo(tmp_path / "s-1-1.json")
    (tmp_path / "s-1-2.json").symlink_to("/dev/zero")
    records = trio.run(store.load_all)
    assert [r.id for r in records] == ["s-1-3"]
    assert sorted(p.name.split(".json")[0] for p in (tmp_path / "quarantine").iterdir()) == ["s-1-1", "s-1-2"]
