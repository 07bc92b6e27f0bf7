"""A test fails when the gateway does file I/O on the Trio thread (issue 25, build item 1).

Caught by what was called, not by how long it took (a busy machine must not fail a test): an
audit hook (`sys.addaudithook`) sees every `open` and the `os.*` file events; each one raised
inside a Trio task step (where `trio.lowlevel.current_task()` answers: never a worker thread)
is recorded with its task. A disk call the
harness runs inline (`storage.atomic.inline`, a thread in production) is let through, and so
is what Python does on its own account (importing a module, reading its source for a
traceback), what a test, the harness or a fake does itself (the nearest caller decides), and
what a one-shot CLI command's loop does (it serves nobody else meanwhile).

    pytestmark = pytest.mark.usefixtures("no_file_io_on_the_loop")

An audit hook cannot be removed once added: one is added per process, on first use, and it
does nothing unless a guard is active (`_ACTIVE`, the one piece of module state, for that
reason).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import trio

from trio_gateway.storage.atomic import RUNNER_CALL

# The file events of `os` (https://docs.python.org/3/library/audit_events.html) besides `open`.
FILE_EVENTS = frozenset(
    {
        "open",
        "os.listdir",
        "os.scandir",
        "os.remove",
        "os.rename",
        "os.mkdir",
        "os.rmdir",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.link",
        "os.symlink",
        "os.utime",
        "os.chdir",
    }
)
# Python's own reads: modules imported on first use, sources shown in a traceback, the
# interpreter's data. Not the gateway's I/O, and the same on every run.
_PYTHON_FILES = (".py", ".pyc", ".so", ".pth", ".zip")


@attrs.define(eq=False)
class FileIoOnTheLoop:
    """Records file events raised inside a Trio task step (on the Trio thread: a worker thread
    has no current task)."""

    found: list[str] = attrs.Factory(list)

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        if event not in FILE_EVENTS or RUNNER_CALL.get():
            return
        path = args[0] if args else None
        if isinstance(path, int) or (isinstance(path, str) and path.endswith(_PYTHON_FILES)):
            return  # an fd already open (os.fdopen), or Python's own file
        if isinstance(path, str) and path.startswith("/proc/"):
            return  # the kernel's own figures (/metrics' process_*): memory, never a disk
        try:
            task = trio.lowlevel.current_task()
        except RuntimeError:
            return  # not in a task step: another thread, or no Trio run at all
        if not _the_gateway_did_it(sys._getframe(2)):
            return
        if len(self.found) < 50:
            self.found.append(f"{event}({path!r}) in task {task.name}")


_PACKAGE = str(Path(__file__).resolve().parent.parent) + os.sep
_HARNESS = tuple(_PACKAGE + room + os.sep for room in ("sim", "testing"))
_CLI = _PACKAGE + "cli" + os.sep
_PROCESS = _PACKAGE + "app" + os.sep + "process.py"
_STORAGE = _PACKAGE + "storage" + os.sep
# Python's own frames (the stdlib, site-packages): they never decide. Looked at after the
# package's: an installed trio_gateway lives in site-packages too.
_PYTHON = tuple({os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _the_gateway_did_it(frame: FrameType | None) -> bool:
    """Whose call it was, by the nearest caller that is not Python's or the storage room's:
    the gateway's own code (recorded), or a test, the harness or the fakes setting things up
    (`sim.runtime.gateway_deps` creating the home). The import machinery is Python's."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<frozen importlib"):
            return False
        if name.startswith(_PACKAGE) and not name.startswith(_STORAGE):
            return not name.startswith(_HARNESS) and not _a_cli_commands_loop(frame)
        if not name.startswith(("<", _STORAGE, *_PYTHON)):
            return False  # a test's own code
        frame = frame.f_back
    return False


def _a_cli_commands_loop(frame: FrameType | None) -> bool:
    """Run by a one-shot CLI command (`delivery list`, `process --once`): a `cli/` frame below
    trio's runner and no gateway process. That loop serves nobody else while it reads."""
    cli = False
    while frame is not None:
        name = frame.f_code.co_filename
        if name == _PROCESS:
            return False
        cli = cli or name.startswith(_CLI)
        frame = frame.f_back
    return cli


_ACTIVE: list[FileIoOnTheLoop] = []
_HOOKED: list[bool] = []


def _hook(event: str, args: tuple[Any, ...]) -> None:
    for guard in _ACTIVE:
        guard.audit(event, args)


@contextmanager
def guarded() -> Iterator[FileIoOnTheLoop]:
    """Record file I/O inside Trio task steps for the block's length (any Trio run in it)."""
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED.append(True)
    guard = FileIoOnTheLoop()
    _ACTIVE.append(guard)
    try:
        yield guard
    finally:
        _ACTIVE.remove(guard)
