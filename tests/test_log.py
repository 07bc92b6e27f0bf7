"""Log lines (SPEC 8): JSON lines carry fields as keys, the text lines read as before; the log
file rotates by size within its bounds."""

from __future__ import annotations

import datetime as dt
import fcntl
import io
import json
import os
import threading
import time
from pathlib import Path

import pytest

from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog, FileSink, Rotation, StreamSink, open_log
from trio_gateway.policy import config as cfg

WHEN = dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC)
# Bounds on waits that only fail a broken test.
WAIT_SECONDS = 30.0


def both(emit: str, *args: object, **kwargs: object) -> tuple[str, dict[str, object]]:
    text, js = io.StringIO(), io.StringIO()
    log = EventLog([StreamSink(text, "text"), StreamSink(js, "json")], wall_clock=lambda: WHEN)
    getattr(log, emit)(*args, **kwargs)
    return text.getvalue().strip(), json.loads(js.getvalue())


def test_a_delivery_line_reads_as_the_contract_in_text_and_has_real_keys_in_json() -> None:
    lead = {"Channel": "openclaw-weixin", "id": "01ABC", "to": "o9cq80abc@im.wechat"}
    text, record = both("warn", "DELIVERY", "Retry 2/20 in 1.5s", lead=lead, reason="HTTP 503")
    assert text == (
        "2026-06-15T03:21:00.000Z WARN [DELIVERY] Channel=openclaw-weixin id=01ABC to=o9cq80abc@im.wechat "
        'Retry 2/20 in 1.5s reason="HTTP 503"'
    )
    assert record == {
        "ts": "2026-06-15T03:21:00Z",
        "level": "WARN",
        "tag": "DELIVERY",
        "message": "Retry 2/20 in 1.5s",
        "channel": "openclaw-weixin",
        "id": "01ABC",
        "to": "o9cq80abc@im.wechat",
        "reason": "HTTP 503",
    }


def test_restart_and_abort_lines_keep_their_text_and_key_their_numbers() -> None:
    text, record = both("info", "RESTART", "accepting work", lead={"generation": 2})
    assert text.endswith("INFO [RESTART] generation=2 accepting work")
    assert (record["message"], record["generation"]) == ("accepting work", 2)
    text, record = both("warn", "AUTO-ABORT", "Aborting stalled model_call in", session="s-1-1")
    assert text.endswith("[AUTO-ABORT] Aborting stalled model_call in session=s-1-1")
    assert record["session"] == "s-1-1"


def write_lines(sink: FileSink, n: int) -> None:
    log = EventLog([sink], wall_clock=lambda: WHEN)
    for i in range(n):
        log.info("TEST", f"line {i:05d}", pad="x" * 60)


def test_the_log_file_rotates_by_size_and_keeps_backup_count_files(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "gateway.log"
    sink = FileSink(path, "text", Rotation(max_bytes=4096, backup_count=2))
    write_lines(sink, 300)  # ~ 30 kB of lines: several rotations
    sink.close()
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["gateway.log", "gateway.log.1", "gateway.log.2"]
    for p in path.parent.iterdir():
        assert p.stat().st_size <= 4096
    # Nothing torn, the newest lines in the live file, the next older ones in .1.
    live = path.read_text().splitlines()
    older = (path.parent / "gateway.log.1").read_text().splitlines()
    assert live[-1].endswith("line 00299 pad=" + "x" * 60)
    assert older[-1].split("line ")[1][:5] == f"{int(live[0].split('line ')[1][:5]) - 1:05d}"


def test_rotation_appends_to_an_existing_file_until_it_is_full(tmp_path: Path) -> None:
    path = tmp_path / "gateway.log"
    path.write_text("from the last run\n")
    sink = FileSink(path, "text", Rotation(max_bytes=65536, backup_count=1))
    write_lines(sink, 3)
    sink.close()
    assert path.read_text().startswith("from the last run\n")
    assert not (tmp_path / "gateway.log.1").exists()


def test_rotation_keys_are_bounded() -> None:
    assert cfg.parse({"logging": {"maxFileBytes": 1048576, "backupCount": 0}}).logging.backup_count == 0
    with pytest.raises(ConfigError, match=r"logging.maxFileBytes: must be between 65536 and 1073741824, got 1000"):
        cfg.parse({"logging": {"maxFileBytes": 1000}})
    with pytest.raises(ConfigError, match=r"logging.backupCount: must be between 0 and 100, got 101"):
        cfg.parse({"logging": {"backupCount": 101}})
    with pytest.raises(ConfigError, match=r"logging.backupCount: expected a whole number"):
        cfg.parse({"logging": {"backupCount": "3"}})


def test_a_stderr_pipe_nobody_reads_drops_and_counts_lines_instead_of_blocking() -> None:
    """Issue 25 finding 4: the echo to stderr is written by a thread of its own; a full pipe
    stalls that thread, and past its backlog lines are dropped and counted, never waited for."""
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 4096)
    stream = os.fdopen(write_end, "w")
    log = open_log(None, echo=stream)
    lines = 12_000  # more than the backlog (10,000) plus what a one-page pipe holds

    def emit_all() -> None:
        for n in range(lines):
            log.info("TEST", f"line {n}")

    writer = threading.Thread(target=emit_all, daemon=True)
    writer.start()
    writer.join(WAIT_SECONDS)
    try:
        assert not writer.is_alive(), "a log call blocked on the full pipe"
        dropped = log.failed_writes
        assert 0 < dropped < lines
        started = time.monotonic()
        log.close(timeout=0.2)  # gives up on the stuck writer: a stop's cleanup stays bounded
        assert time.monotonic() - started < WAIT_SECONDS
    finally:
        os.close(read_end)  # the stuck writer's write fails; its daemon thread ends
        stream.close()
