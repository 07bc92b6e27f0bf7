"""`trio-gateway logs [--follow] [--json] [-n N]` (SPEC 4): the gateway's log, read-only.

Reads `logs/gateway.log` whether or not a gateway runs; never creates anything. `--follow`
keeps printing new lines across size rotations (like `tail -F`) until Ctrl-C. `--json` prints
one JSON object per line: JSON log lines as they are, text lines split into their parts.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from trio_gateway.errors import NotFoundError

if TYPE_CHECKING:
    from trio_gateway.cli import Context

_FOLLOW_POLL_SECONDS = 0.2
_TEXT_LINE = re.compile(r"^(?P<ts>\S+) (?P<level>DEBUG|INFO|WARN|ERROR)(?: \[(?P<tag>[^\]]*)\])?(?: (?P<message>.*))?$")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until Ctrl-C")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="start N lines back (0: all)")
    parser.set_defaults(func=_logs)


def as_json(line: str) -> str:
    if line.startswith("{"):
        try:
            json.loads(line)
            return line
        except ValueError:
            pass
    match = _TEXT_LINE.match(line)
    if match is None:
        return json.dumps({"message": line}, ensure_ascii=False)
    record = {k: v for k, v in match.groupdict().items() if v is not None}
    return json.dumps(record, ensure_ascii=False)


def _last_lines(f: Iterable[str], n: int) -> list[str]:
    return list(f) if n <= 0 else list(collections.deque(f, maxlen=n))


def _logs(args: argparse.Namespace, ctx: Context) -> int:
    path = ctx.home.log_path
    if not path.exists():
        raise NotFoundError(f"no log at {path} (has a gateway run with this home?)")
    show: Callable[[str], str] = as_json if args.json else (lambda line: line)
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            _print(show(line.rstrip("\n")) for line in _last_lines(f, args.lines))
            if args.follow:
                follow(path, f, lambda line: _print([show(line)]))
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `logs | head`: the reader has all it wants.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _print(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def follow(path: Path, f: IO[str], emit: Callable[[str], None], *, stop: Callable[[], bool] = lambda: False) -> None:
    """Print lines appended to `path` from `f`'s position on; reopen it when it is rotated
    (another file at the path) or truncated. Runs until `stop()` or Ctrl-C."""
    pending = ""
    while not stop():
        chunk = f.read()
        if chunk:
            pending += chunk
            *complete, pending = pending.split("\n")
            for line in complete:
                emit(line)
            continue
        if _replaced(path, f):
            f.close()
            f = path.open(encoding="utf-8", errors="replace")
            continue
        time.sleep(_FOLLOW_POLL_SECONDS)


def _replaced(path: Path, f: IO[str]) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False  # between a rotation's rename and the new file: wait for it
    mine = os.fstat(f.fileno())
    return now.st_ino != mine.st_ino or now.st_size < f.tell()
