"""The process around a gateway: lock, token, state file, signals, systemd notify."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_gateway.app.process import GatewayProcess
from trio_gateway.app.sd_notify import Notifier
from trio_gateway.errors import ConfigError, GatewayLockedError, UnauthorizedError
from trio_gateway.http.auth import check_bearer, is_loopback, token_for_start
from trio_gateway.http.server import HttpServer
from trio_gateway.log import EventLog
from trio_gateway.sim.runtime import build_gateway, quick_config
from trio_gateway.storage.home import Home
from trio_gateway.storage.lock import hold_lock


def test_a_second_lock_on_the_same_home_names_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / "gateway.lock"
    # flock is per open file: a second open in this very process contends like another process.
    with (
        hold_lock(lock, tmp_path),
        pytest.raises(GatewayLockedError, match=rf"another gateway \(pid {os.getpid()}\)"),
        hold_lock(lock, tmp_path),
    ):
        pass
    with hold_lock(lock, tmp_path):  # released on exit: the next start gets it
        assert lock.read_text().strip() == str(os.getpid())


def test_token_is_created_0600_once_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.token"
    token = token_for_start(path, "127.0.0.1")
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token_for_start(path, "0.0.0.0") == token  # an existing token may be exposed


def test_non_loopback_bind_without_a_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gateway.token"
    with pytest.raises(ConfigError, match=r"gateway\.bind: 0\.0\.0\.0 is not a loopback address"):
        token_for_start(path, "0.0.0.0")
    assert not path.exists()


LOOPBACK = [("127.0.0.1", True), ("::1", True), ("localhost", True)]
NOT_LOOPBACK = [("0.0.0.0", False), ("10.1.2.3", False), ("example.org", False)]


@pytest.mark.parametrize(("bind", "loopback"), LOOPBACK + NOT_LOOPBACK)
def test_is_loopback(bind: str, loopback: bool) -> None:
    assert is_loopback(bind) is loopback


def test_bearer_comparison() -> None:
    check_bearer({"authorization": "Bearer secret"}, "secret")
    for header in ("Bearer secre", "bearer secrett", "", "Token secret"):
        with pytest.raises(UnauthorizedError) as info:
            check_bearer({"authorization": header}, "secret")
        assert "secret" not in str(info.value).replace("bearer token", "")


def test_notifier_sends_datagrams_and_parses_the_watchdog(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval == 2.0
        notifier.ready("generation 1 accepting work")
        notifier.watchdog()
        assert sock.recv(512).decode().split("\n") == ["READY=1", "STATUS=generation 1 accepting work"]
        assert sock.recv(512) == b"WATCHDOG=1"
    assert Notifier.from_env({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    Notifier.from_env({}).ready("nobody listens")  # no socket: a no-op, not an error


async def file_shows(path: Path, check: Callable[[dict[str, Any]], bool]) -> None:
    # The state file is written from a worker thread: there is no event to wait on.
    file = trio.Path(path)
    with trio.fail_after(30):  # ends a broken run only
        while not (await file.exists() and check(json.loads(await file.read_text()))):  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_signals_restart_and_stop_and_the_state_file_follows(tmp_path: Path) -> None:
    """SIGHUP restarts, SIGINT stops; gateway.state.json and systemd see each state."""
    sock_path = str(tmp_path / "notify.sock")
    receiver = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await receiver.bind(sock_path)
    gateway, _ = build_gateway(tmp_path, quick_config())
    home = Home(tmp_path)
    server = HttpServer("127.0.0.1", 0, "t", {})
    proc = GatewayProcess(gateway, server, home, Notifier(sock_path), EventLog())
    messages: list[str] = []
    stopping = trio.Event()
    with receiver:
        async with trio.open_nursery() as nursery:

            async def collect() -> None:
                while True:
                    messages.append((await receiver.recv(512)).decode())
                    if messages[-1].startswith("STOPPING=1"):
                        stopping.set()

            nursery.start_soon(collect)
            async with trio.open_nursery() as inner:
                inner.start_soon(proc.run)
                await gateway.state.wait_value("running")
                await file_shows(home.state_path, lambda d: d["generation"] == 1)
                os.kill(os.getpid(), signal.SIGHUP)
                await gateway.state.wait_value(lambda s: s == "running" and gateway.generation_number == 2)
                await file_shows(home.state_path, lambda d: d["generation"] == 2)
                state = json.loads(await trio.Path(home.state_path).read_text())
                assert (state["pid"], state["state"]) == (os.getpid(), "running")
                os.kill(os.getpid(), signal.SIGINT)
            with trio.fail_after(30):  # ends a broken run only: the datagram was sent before the stop
                await stopping.wait()
            nursery.cancel_scope.cancel()
    assert gateway.state.value == "stopped"
    assert [m.split("\n")[0] for m in messages][:3] == ["READY=1", "RELOADING=1", "READY=1"]
    assert "READY=1\nSTATUS=generation 2 accepting work" in messages
    assert messages[-1].startswith("STOPPING=1")
