"""The event log (SPEC 8): `TIMESTAMP LEVEL [TAG] message key=value ...`, or JSON lines.

An `EventLog` is passed explicitly to whoever logs (no global logger), and fans each event out
to its sinks: the log file, stderr, and in tests or scenarios an in-memory list that keeps the
virtual time each event happened at, so a timeline can be printed in MockClock seconds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import math
import os
import queue
import re
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import attrs
import trio

Level = Literal["DEBUG", "INFO", "WARN", "ERROR"]
LogFormat = Literal["text", "json"]


@attrs.frozen
class Event:
    wall: dt.datetime
    clock: float | None  # trio.current_time() when logged inside trio (virtual under MockClock)
    level: Level
    tag: str
    message: str  # as the text line shows it: `lead` fields first, then the words
    fields: dict[str, Any]
    # Fields the contract's text puts before the words (`Channel=x id=y to=z Success`): in a
    # JSON line they are keys of their own and `words` is the message.
    lead: dict[str, Any] = attrs.Factory(dict)
    words: str | None = None

    def text(self) -> str:
        stamp = self.wall.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        tag = f" [{self.tag}]" if self.tag else ""
        message = f" {_escape_controls(self.message)}" if self.message else ""
        kv = "".join(f" {k}={_kv_value(v)}" for k, v in self.fields.items())
        return f"{stamp} {self.level}{tag}{message}{kv}"

    def json(self) -> str:
        record: dict[str, Any] = {
            "ts": self.wall.isoformat().replace("+00:00", "Z"),
            "level": self.level,
            "tag": self.tag,
            "message": self.message if self.words is None else self.words,
        }
        record.update((_json_key(k), v) for k, v in self.lead.items())
        record.update(self.fields)
        return json.dumps(record, default=str, ensure_ascii=False)

    def line(self, fmt: LogFormat) -> str:
        return self.json() if fmt == "json" else self.text()


def _json_key(label: str) -> str:
    """`Channel` (as the contract's text spells it) -> `channel` (as JSON keys are spelled)."""
    return label[:1].lower() + label[1:]


# Characters that end a line or drive a terminal. A value with one of them (a console address
# `"ops\nINFO [RESTART] ..."`) would otherwise forge a line of its own in the text log.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_controls(text: str) -> str:
    """`text` with every control character written as its JSON escape (`\\n`, `\\u001b`)."""
    return _CONTROLS.sub(lambda m: json.dumps(m.group())[1:-1], text)


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or _CONTROLS.search(text) or any(c.isspace() or c == '"' for c in text):
        return _escape_controls(json.dumps(text, ensure_ascii=False))
    return text


class Sink(Protocol):
    def write(self, event: Event) -> None: ...


def open_append(path: Path) -> IO[str]:
    """The log file, opened for appending, line-buffered. Refuses a FIFO or a device (opening
    one for writing can block until a reader comes, which would be forever)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    os.set_blocking(fd, True)
    # backslashreplace: a string that cannot be UTF-8 (a lone surrogate) is written escaped
    # rather than failing the line.
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace", buffering=1)


# Lines waiting for the writer thread; past this (a log disk that stopped answering) new lines
# are dropped and counted, never queued without bound.
_LOG_BACKLOG = 50_000
# How long closing (or exiting) waits for queued lines to reach the file.
_EXIT_FLUSH_SECONDS = 2.0
# Lines waiting for stderr: a pipe's own buffer (64 KiB) holds a few hundred more.
_STDERR_BACKLOG = 10_000
# How long exiting waits for stderr's queued lines: a pipe someone reads drains in far less,
# and one nobody reads never does (the stop's time must not pay for it).
_STDERR_EXIT_FLUSH_SECONDS = 0.5


@attrs.define
class StreamSink:
    """Echoes lines to a stream (stderr). With `threaded` (the gateway's), a thread of its own
    writes them: a stderr pipe nobody reads (Docker's blocking log mode, a stuck journald, a
    paused terminal) fills, and a write to it then blocks until someone reads. Past a backlog,
    lines are dropped and counted (`failed`), never waited for: the event loop must go on."""

    stream: IO[str]
    fmt: LogFormat = "text"
    threaded: bool = False
    failed: int = 0
    _writer: _LineWriter | None = None

    def __attrs_post_init__(self) -> None:
        if self.threaded:
            self._writer = _LineWriter(_raw_writer(self.stream), "log-stderr", _STDERR_BACKLOG)

    def write(self, event: Event) -> None:
        line = event.line(self.fmt) + "\n"
        if self._writer is None:
            self.stream.write(line)
            self.stream.flush()
        elif not self._writer.put(line):
            self.failed += 1

    @property
    def dropped(self) -> int:
        """Lines dropped (backlog full) or not written (the stream raised)."""
        return self.failed + (self._writer.failed if self._writer is not None else 0)

    def close(self, timeout: float = 0.0) -> None:
        if self._writer is not None:
            self._writer.close(timeout)


def _raw_writer(stream: IO[str]) -> Callable[[str], None]:
    """How the thread writes a line: straight to a duplicate of the stream's descriptor when it
    has one. Not through `stream` itself: a thread blocked inside a buffered stream's write holds
    that stream's lock, and the interpreter aborts at exit when it cannot take that lock to flush
    stderr ("could not acquire lock ... at interpreter shutdown")."""
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):  # a StringIO, a closed stream

        def through_stream(line: str) -> None:
            stream.write(line)
            stream.flush()

        return through_stream

    def to_fd(line: str) -> None:
        data = line.encode("utf-8", errors="backslashreplace")
        while data:
            data = data[os.write(fd, data) :]

    return to_fd


@attrs.define(eq=False)
class _LineWriter:
    """A bounded queue of lines and the daemon thread that writes them with `write`. Never
    blocks the caller, never raises: a full backlog refuses the line (`put` says False), a write
    that raises is counted in `failed`. A daemon, so a write that never returns (a hung disk, a
    pipe nobody reads) never holds the process at exit; what is queued is written at exit for
    at most `_EXIT_FLUSH_SECONDS`, also for a run that never calls `close`."""

    write: Callable[[str], None]
    name: str
    backlog: int
    done: Callable[[], None] = lambda: None  # after the last line (the file's close)
    failed: int = 0
    _lines: queue.Queue[str | None] = attrs.field(init=False)
    _thread: threading.Thread = attrs.field(init=False)
    _at_exit: weakref.finalize[Any, Any] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._lines = queue.Queue(self.backlog)
        # Started here, not on the first line: lines come from several threads at once.
        self._thread = threading.Thread(target=self._drain, name=self.name, daemon=True)
        self._thread.start()
        self._at_exit = weakref.finalize(self, _finish, self._lines, self._thread, _EXIT_FLUSH_SECONDS)

    def put(self, line: str) -> bool:
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            return False
        return True

    def _drain(self) -> None:
        while (line := self._lines.get()) is not None:
            try:
                self.write(line)
            except Exception:
                self.failed += 1
        self.done()

    def close(self, timeout: float) -> None:
        # Closed once: the exit's own flush is not waited for a second time.
        if self._at_exit.detach() is not None:
            _finish(self._lines, self._thread, timeout)


@attrs.frozen
class Rotation:
    """Size-based rotation (`logging.maxFileBytes`, `logging.backupCount`): past the size, the
    file becomes `gateway.log.1`, the older ones move up one, and the oldest beyond
    `backup_count` goes. Bounded disk: (backup_count + 1) * max_bytes."""

    max_bytes: int = 10 * 1024 * 1024
    backup_count: int = 5


@attrs.define
class FileSink:
    """Appends to `logs/gateway.log` (rotated by size, `Rotation`), from a thread of its own
    (the `logs` subsystem): logging is called from everywhere, error handling included, so it
    must never block the event loop (a hung disk, a FIFO) and never raise (ENOSPC). A line that
    cannot be written is counted; the first failure is reported on stderr once. Line-buffered:
    `tail -f` shows events as they happen (`tail -F` across rotations), and a write that fails
    reopens the file for the next line (space may come back).

    `opener` is the seam for fault injection (`testing.faults`): how the file is opened."""

    path: Path
    fmt: LogFormat = "text"
    rotation: Rotation | None = None
    opener: Callable[[Path], IO[str]] = open_append
    report: Callable[[str], None] = lambda text: _report_once(text)
    failed: int = 0
    _file: IO[str] | None = None
    _size: int = 0
    _writer: _LineWriter | None = None
    _reported: bool = False

    # False: write on the caller's thread (a one-shot CLI command, whose lines must be in the
    # file when it returns and which has no event loop to keep serving); still never raises.
    threaded: bool = True

    def __attrs_post_init__(self) -> None:
        if self.threaded:
            self._writer = _LineWriter(self._write_line, "log-writer", _LOG_BACKLOG, done=self._close_file)

    def write(self, event: Event) -> None:
        if self._writer is None:
            self._write_line(event.line(self.fmt) + "\n")
        elif not self._writer.put(event.line(self.fmt) + "\n"):
            self._failure("the log disk stopped answering; lines are being dropped")

    def _write_line(self, line: str) -> None:
        try:
            if self._file is None:
                self._open()
            size = len(line.encode(errors="backslashreplace"))
            if self.rotation is not None and self._size > 0 and self._size + size > self.rotation.max_bytes:
                self._rotate(self.rotation)
            assert self._file is not None
            self._file.write(line)
            self._size += size
        except Exception as exc:
            self._close_file()
            self._failure(f"{type(exc).__name__}: {exc}")

    def _open(self) -> None:
        self._file = self.opener(self.path)
        self._size = self._file.tell()

    def _rotate(self, rotation: Rotation) -> None:
        self._close_file()
        try:
            for n in range(rotation.backup_count, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                newer = self.path.with_name(f"{self.path.name}.{n - 1}") if n > 1 else self.path
                if newer.exists():
                    newer.replace(older)  # the one at backup_count is replaced: the oldest goes
            if rotation.backup_count == 0:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass  # a failed rotation must not lose the line: keep appending to what is there
        self._open()

    def _failure(self, why: str) -> None:
        self.failed += 1
        if not self._reported:
            self._reported = True
            self.report(f"trio-gateway: cannot write {self.path} ({why}); later failures are counted, not shown")

    def _close_file(self) -> None:
        with contextlib.suppress(Exception):
            if self._file is not None:
                self._file.close()
        self._file = None

    def close(self, timeout: float = _EXIT_FLUSH_SECONDS) -> None:
        """Write what is queued (for at most `timeout`: a hung disk keeps its lines), then close.
        A sink is closed once; lines written after that are dropped."""
        if self._writer is not None:
            self._writer.close(timeout)
        else:
            self._close_file()


def _finish(lines: queue.Queue[str | None], thread: threading.Thread, timeout: float) -> None:
    # Stuck in a write past `timeout`: abandoned (a daemon thread), never waited for longer.
    with contextlib.suppress(queue.Full):
        lines.put_nowait(None)
    thread.join(timeout)


def _report_once(text: str) -> None:
    """Said once, from a daemon thread of its own: stderr may be a pipe nobody reads."""

    def say() -> None:
        # Straight to the descriptor, not through `sys.stderr` (see `_raw_writer`).
        with contextlib.suppress(Exception):  # stderr itself may be gone or full
            os.write(sys.stderr.fileno(), (text + "\n").encode("utf-8", errors="backslashreplace"))

    threading.Thread(target=say, name="log-report", daemon=True).start()


@attrs.define
class MemorySink:
    events: list[Event] = attrs.Factory(list)

    def write(self, event: Event) -> None:
        self.events.append(event)

    def tagged(self, tag: str) -> list[Event]:
        return [e for e in self.events if e.tag == tag]

    def lines(self) -> list[str]:
        return [e.text() for e in self.events]


def _trio_clock() -> float | None:
    try:
        return trio.current_time()
    except RuntimeError:
        return None


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@attrs.define
class EventLog:
    sinks: list[Sink] = attrs.Factory(list)
    min_level: Level = "INFO"
    wall_clock: Callable[[], dt.datetime] = _utc_now

    # Sink writes that raised (a full or closed stderr): counted, the first reported once.
    failed: int = 0

    def emit(self, level: Level, tag: str, message: str, *, lead: Any = None, **fields: Any) -> None:
        """Never raises and never blocks on a disk: logging runs inside error handling."""
        if _LEVELS[level] < _LEVELS[self.min_level]:
            return
        clock = _trio_clock()
        if lead:
            head = " ".join(f"{k}={_kv_value(v)}" for k, v in lead.items())
            text = f"{head} {message}" if message else head
            event = Event(self.wall_clock(), clock, level, tag, text, fields, dict(lead), message)
        else:
            event = Event(self.wall_clock(), clock, level, tag, message, fields)
        for sink in self.sinks:
            try:
                sink.write(event)
            except Exception as exc:
                self.failed += 1
                if self.failed == 1:
                    _report_once(
                        f"trio-gateway: a log sink failed ({type(exc).__name__}: {exc}); later failures are counted"
                    )

    @property
    def failed_writes(self) -> int:
        """Every line some sink could not take, the file sink's and stderr's included."""
        files = sum(s.failed for s in self.sinks if isinstance(s, FileSink))
        return self.failed + files + sum(s.dropped for s in self.sinks if isinstance(s, StreamSink))

    def debug(self, tag: str, message: str, *, lead: Any = None, **fields: Any) -> None:
        self.emit("DEBUG", tag, message, lead=lead, **fields)

    def info(self, tag: str, message: str, *, lead: Any = None, **fields: Any) -> None:
        self.emit("INFO", tag, message, lead=lead, **fields)

    def warn(self, tag: str, message: str, *, lead: Any = None, **fields: Any) -> None:
        self.emit("WARN", tag, message, lead=lead, **fields)

    def error(self, tag: str, message: str, *, lead: Any = None, **fields: Any) -> None:
        self.emit("ERROR", tag, message, lead=lead, **fields)

    def close(self, timeout: float = _EXIT_FLUSH_SECONDS) -> None:
        """Flush and close the threaded sinks, all within one `timeout` (a stop's bounded
        cleanup): a sink stuck on a hung disk or a full pipe keeps its lines."""
        deadline = time.monotonic() + timeout
        for sink in self.sinks:
            left = max(0.0, deadline - time.monotonic())
            if isinstance(sink, FileSink):
                sink.close(left)
            elif isinstance(sink, StreamSink):
                sink.close(min(left, _STDERR_EXIT_FLUSH_SECONDS))


_LEVELS: dict[Level, int] = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def open_log(
    log_path: Path | None,
    *,
    fmt: LogFormat = "text",
    echo: IO[str] | None = sys.stderr,
    rotation: Rotation | None = None,
    threaded: bool = True,
) -> EventLog:
    sinks: list[Sink] = []
    if log_path is not None:
        sinks.append(FileSink(log_path, fmt, rotation, threaded=threaded))
    if echo is not None:
        sinks.append(StreamSink(echo, fmt, threaded=threaded))
    return EventLog(sinks)


def ms(seconds: float) -> str:
    """Durations in log lines are whole milliseconds, as the contract's lines show them."""
    millis = seconds * 1000
    # Formatting a log line must never be what kills the gateway: `round(inf)` raises.
    return f"{round(millis)}ms" if math.isfinite(millis) else f"{millis}ms"
