"""The event log (SPEC 8): `TIMESTAMP LEVEL [TAG] message key=value ...`, or JSON lines.

An `EventLog` is passed explicitly to whoever logs (no global logger), and fans each event out
to its sinks: the log file, stderr, and in tests or scenarios an in-memory list that keeps the
virtual time each event happened at, so a timeline can be printed in MockClock seconds.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import sys
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
    message: str
    fields: dict[str, Any]

    def text(self) -> str:
        stamp = self.wall.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        tag = f" [{self.tag}]" if self.tag else ""
        message = f" {escape_controls(self.message)}" if self.message else ""
        kv = "".join(f" {k}={_kv_value(v)}" for k, v in self.fields.items())
        return f"{stamp} {self.level}{tag}{message}{kv}"

    def json(self) -> str:
        record: dict[str, Any] = {
            "ts": self.wall.isoformat().replace("+00:00", "Z"),
            "level": self.level,
            "tag": self.tag,
            "message": self.message,
        }
        record.update(self.fields)
        return json.dumps(record, default=str, ensure_ascii=False)

    def line(self, fmt: LogFormat) -> str:
        return self.json() if fmt == "json" else self.text()


# Characters that end a line or drive a terminal. A value with one of them (a console address
# `"ops\nINFO [RESTART] ..."`) would otherwise forge a line of its own in the text log.
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with every control character written as its JSON escape (`\\n`, `\\u001b`)."""
    return _CONTROLS.sub(lambda m: json.dumps(m.group())[1:-1], text)


def _kv_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or _CONTROLS.search(text) or any(c.isspace() or c == '"' for c in text):
        return escape_controls(json.dumps(text, ensure_ascii=False))
    return text


class Sink(Protocol):
    def write(self, event: Event) -> None: ...


@attrs.define
class StreamSink:
    stream: IO[str]
    fmt: LogFormat = "text"

    def write(self, event: Event) -> None:
        self.stream.write(event.line(self.fmt) + "\n")
        self.stream.flush()


@attrs.define
class FileSink:
    """Appends to `logs/gateway.log`. Line-buffered: a crash loses at most the line being
    written, and `tail -f` shows events as they happen."""

    path: Path
    fmt: LogFormat = "text"
    _file: IO[str] | None = None

    def write(self, event: Event) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # backslashreplace: a string that cannot be UTF-8 (a lone surrogate) is written
            # escaped rather than raising inside whatever error handling is logging it.
            self._file = self.path.open("a", encoding="utf-8", errors="backslashreplace", buffering=1)
        self._file.write(event.line(self.fmt) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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

    def emit(self, level: Level, tag: str, message: str, **fields: Any) -> None:
        if _LEVELS[level] < _LEVELS[self.min_level]:
            return
        event = Event(self.wall_clock(), _trio_clock(), level, tag, message, fields)
        for sink in self.sinks:
            sink.write(event)

    def debug(self, tag: str, message: str, **fields: Any) -> None:
        self.emit("DEBUG", tag, message, **fields)

    def info(self, tag: str, message: str, **fields: Any) -> None:
        self.emit("INFO", tag, message, **fields)

    def warn(self, tag: str, message: str, **fields: Any) -> None:
        self.emit("WARN", tag, message, **fields)

    def error(self, tag: str, message: str, **fields: Any) -> None:
        self.emit("ERROR", tag, message, **fields)

    def close(self) -> None:
        for sink in self.sinks:
            if isinstance(sink, FileSink):
                sink.close()


_LEVELS: dict[Level, int] = {"DEBUG": 10, "INFO": 20, "WARN": 30, "ERROR": 40}


def open_log(log_path: Path | None, *, fmt: LogFormat = "text", echo: IO[str] | None = sys.stderr) -> EventLog:
    sinks: list[Sink] = []
    if log_path is not None:
        sinks.append(FileSink(log_path, fmt))
    if echo is not None:
        sinks.append(StreamSink(echo, fmt))
    return EventLog(sinks)


def ms(seconds: float) -> str:
    """Durations in log lines are whole milliseconds, as the contract's lines show them."""
    millis = seconds * 1000
    # Formatting a log line must never be what kills the gateway: `round(inf)` raises.
    return f"{round(millis)}ms" if math.isfinite(millis) else f"{millis}ms"
