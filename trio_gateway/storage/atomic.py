"""Atomic, durable file writes: the one place that knows how to put bytes on disk safely.

A write goes to a temporary file in the same directory, is fsynced, renamed over the target,
and then the directory is fsynced so the rename itself survives a power cut. A crash at any
instant leaves the old file or the new one, never a torn one (the Maildir discipline).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")


# How blocking disk work is run from trio code. Production hands it to a worker thread so the
# event loop keeps serving; tests on a MockClock run it inline, because trio's autojump clock
# would otherwise jump to the next deadline while the thread is still fsyncing.
class BlockingRunner(Protocol):
    def __call__(self, fn: Callable[[], T], /) -> Awaitable[T]: ...


async def in_thread(fn: Callable[[], T]) -> T:
    # Abandoned when the caller is cancelled: a hung disk must never hold a cancelled caller
    # (a drain's cleanup bound) hostage. Safe because every write here is atomic, so an
    # abandoned one lands whole or not at all. The gateway itself gives each subsystem its
    # own limiter (`disk.DiskRunners`); this shared one serves the CLI and the HTTP reads.
    return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)


# True while `inline` runs a disk call on the Trio thread: a call that production runs in a
# thread (`in_thread`, `disk.DiskRunners`), so the testing kit's guard against file I/O on the
# loop (`testing/io_guard.py`) lets it pass. Nothing else reads it.
RUNNER_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("RUNNER_CALL", default=False)


async def inline(fn: Callable[[], T]) -> T:
    await trio.lowlevel.checkpoint()
    token = RUNNER_CALL.set(True)
    try:
        return fn()
    finally:
        RUNNER_CALL.reset(token)


class NotARegularFileError(ValueError):
    """What `read_regular` found is not a file to read: a FIFO, a device (`/dev/zero` behind a
    symlink), a directory, or a file larger than its cap. A ValueError: the callers quarantine
    a bad file (queue, sessions) or make it a ConfigError (gateway.json)."""


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of `path` if it is a regular file of at most `max_bytes`. Opened with
    O_NONBLOCK (opening a FIFO nobody writes returns at once instead of waiting for a writer),
    then `fstat`: a FIFO, a device or a directory is refused before a byte is read, and a file
    that grows past the cap while read is refused at the cap. FileNotFoundError passes (issue 25:
    a FIFO froze a reload, `/dev/zero` grew the process by gigabytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFileError(f"{path.name} is not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise NotARegularFileError(f"{path.name} is larger than {max_bytes} bytes ({info.st_size})")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise NotARegularFileError(f"{path.name} grew past {max_bytes} bytes while read")
    return data


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), f"mode {mode:o}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, mode)
        os.replace(tmp_name, path)
    except BaseException:
        # The temporary file is ours and never seen by readers; removing it loses nothing.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if sync_dir:
        fsync_dir(directory)


def atomic_write_json(path: Path, obj: Any, *, mode: int = 0o644) -> None:
    data = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False).encode() + b"\n"
    atomic_write_bytes(path, data, mode=mode)


def atomic_create_bytes(path: Path, data: bytes, *, sync_dir: bool = True) -> None:
    """`atomic_write_bytes` for a name only this call writes (a new unique id): the temporary
    name is fixed and created exclusively, with bare os calls and no mkdir unless the folder
    is missing. The same discipline at fewer syscalls, for a queue's hot path. With
    `sync_dir=False` the caller fsyncs the folder itself (once for several files) and must not
    report the file as written before it has."""
    # Unique per call, not just per process: a retry must not collide with the temporary of
    # an abandoned write still stuck in its thread.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def compact_json(obj: Any) -> bytes:
    """One line, no padding: files read by programs, where every byte is written and fsynced."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def durable_rename(src: Path, dst: Path) -> None:
    """Move a file within one filesystem and make the move survive a crash."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)
