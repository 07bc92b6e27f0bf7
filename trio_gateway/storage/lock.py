"""`gateway.lock`: one running gateway per home, held with `flock` for the process's life.

The kernel releases a flock when its holder dies (SIGKILL included), so a stale file never
blocks a restart; the pid written into it only serves the error message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from trio_gateway.errors import GatewayLockedError


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 64, 0).decode().strip()
        if text:
            return f"pid {int(text)}"
    return "pid unknown"


@contextlib.contextmanager
def hold_lock(path: Path, home: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GatewayLockedError(
                f"another gateway ({_holder(fd)}) is running for home {home}; "
                "stop it first with: trio-gateway gateway stop"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
