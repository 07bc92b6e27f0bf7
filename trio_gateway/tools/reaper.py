"""Orphans of stdio MCP servers (issue 25). A server's child that calls `setsid` leaves the
server's process group, so the stop's SIGKILL to the group misses it; when the server dies it
is reparented to init and outlives the gateway (the probe: one orphan per generation, deaf to
SIGTERM).

So the gateway makes itself a child subreaper (Linux `prctl(PR_SET_CHILD_SUBREAPER)`) when it
starts its first stdio server: such orphans are reparented to the gateway instead. After each
server's stop, every child of the gateway that is not a server it started is such an orphan:
it is killed (SIGKILL) and reaped. Elsewhere than Linux this is a no-op.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator

import attrs
import trio

PR_SET_CHILD_SUBREAPER = 36
# How long the reaping thread waits for killed orphans to exit (SIGKILL is prompt, unless a
# process is stuck in the kernel: then it is left, and init reaps it once it exits).
REAP_WAIT_SECONDS = 1.0


@attrs.define(eq=False)
class Reaper:
    # The servers' pids: children of the gateway that are no orphans.
    live: set[int] = attrs.Factory(set)
    # Servers being started: a fork in flight is not yet in `live`, so no orphan hunt meanwhile.
    spawning: int = 0
    subreaper: bool = False
    killed: list[int] = attrs.Factory(list)

    def become_subreaper(self) -> None:
        if self.subreaper or not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        self.subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        self.become_subreaper()
        self.spawning += 1
        try:
            yield
        finally:
            self.spawning -= 1

    async def kill_orphans(self) -> list[int]:
        """Kill and reap every child that is not a live server (in a thread: it reads /proc)."""
        if not self.subreaper or self.spawning:
            return []
        known = frozenset(self.live)
        killed = await trio.to_thread.run_sync(kill_orphans_sync, os.getpid(), known, abandon_on_cancel=True)
        self.killed += killed
        return killed


def children_sync(parent: int) -> list[int]:
    """Every process whose parent is `parent`, from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # `pid (comm) state ppid ...`: comm may hold spaces and parentheses; the last `)` ends it.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1 and int(fields[1]) == parent:
            found.append(int(name))
    return found


def kill_orphans_sync(parent: int, known: frozenset[int]) -> list[int]:
    orphans = [pid for pid in children_sync(parent) if pid not in known]
    for pid in orphans:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + REAP_WAIT_SECONDS
    waiting = set(orphans)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped already (or not ours after all)
                done = pid
            if done:
                waiting.discard(pid)
        if waiting:
            time.sleep(0.01)
    return orphans
