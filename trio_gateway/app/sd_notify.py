"""systemd's notify protocol (`Type=notify` / `notify-reload`): one datagram per state change
to `$NOTIFY_SOCKET`. Tiny enough not to need a dependency; silent when not under systemd.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Mapping

import attrs


@attrs.frozen
class Notifier:
    address: str | None = None
    # Half of systemd's WatchdogSec: a ping is never late because of one slow tick.
    watchdog_interval: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Notifier:
        address = env.get("NOTIFY_SOCKET") or None
        return cls(address, _watchdog_interval(env))

    def send(self, *assignments: str) -> None:
        if self.address is None:
            return
        # A leading "@" names a Linux abstract socket.
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            # systemd being away or slow must never stop the gateway.
            with contextlib.suppress(OSError):
                sock.sendto("\n".join(assignments).encode(), target)

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def reloading(self, status: str) -> None:
        # notify-reload wants the monotonic time of the reload start with RELOADING=1.
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}", f"STATUS={status}")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid is not None and pid != str(os.getpid()):
        return None  # meant for another process (we were started by a wrapper)
    return int(usec) / 1_000_000 / 2
