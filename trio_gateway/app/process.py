"""`trio-gateway gateway start`: one gateway process, in the foreground.

load + validate config          a bad file exits 2 here: no lock, no token, no port
token (created on loopback)     a non-loopback bind needs an existing token
gateway.lock (flock)            a second gateway on this home exits 1 naming the holder
trio.run
└── helpers nursery
    ├── signals                 SIGTERM/SIGINT stop, 2nd SIGINT forced, SIGHUP restart
    ├── publisher               gateway.state.json + systemd notify on each state change
    ├── systemd watchdog pings  (when WATCHDOG_USEC is set)
    └── gateway.serve()         HTTP server in its root nursery; returns at stop
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import attrs
import trio

from trio_gateway.app import assemble
from trio_gateway.app.sd_notify import Notifier
from trio_gateway.errors import InsufficientStorageError, leaves, only_gateway_error
from trio_gateway.http.auth import token_for_start
from trio_gateway.http.server import HttpServer
from trio_gateway.log import EventLog, LogFormat, Rotation, open_log
from trio_gateway.models.registry import load_config
from trio_gateway.policy.config import Config
from trio_gateway.runtime.gateway import Gateway, State
from trio_gateway.storage.atomic import atomic_write_json
from trio_gateway.storage.disk import DiskRunners, is_no_space
from trio_gateway.storage.home import Home
from trio_gateway.storage.lock import hold_lock
from trio_gateway.work.loop import LoopWatch


@attrs.frozen
class StartOptions:
    home: Home
    log_format: LogFormat = "text"
    port: int | None = None
    bind: str | None = None


def _with_overrides(config: Config, port: int | None, bind: str | None) -> Config:
    section = config.gateway
    section = attrs.evolve(section, port=section.port if port is None else port)
    section = attrs.evolve(section, bind=section.bind if bind is None else bind)
    return attrs.evolve(config, gateway=section)


def start(options: StartOptions, env: Mapping[str, str] = os.environ) -> int:
    home = options.home
    config = _with_overrides(load_config(home.config_path), options.port, options.bind)
    with _no_space_is_an_error(home):
        home.ensure()
        token = token_for_start(home.token_path, config.gateway.bind, env)
        with hold_lock(home.lock_path, home.root):
            rotation = Rotation(config.logging.max_file_bytes, config.logging.backup_count)
            log = open_log(home.log_path, fmt=options.log_format, echo=sys.stderr, rotation=rotation)
            backstop = ExitBackstop(log)
            try:
                server = HttpServer(
                    config.gateway.bind, config.gateway.port, token, env, metrics_token_path=home.metrics_token_path
                )
                disks = DiskRunners.threads()
                gateway = assemble.production_gateway(home, config, log, env, disks=disks, servers=[server.serve])
                process = GatewayProcess(gateway, server, home, Notifier.from_env(env), log, backstop)
                return trio.run(process.run)
            finally:
                # What is left is bounded too: on a hung disk the unlink below never returns.
                backstop.arm(_EXIT_CLEANUP_SECONDS, "the exit's cleanup", stopped=True)
                _StateFile(home, log).remove()
                log.close()
                backstop.disarm()


@contextlib.contextmanager
def _no_space_is_an_error(home: Home) -> Iterator[None]:
    """A full disk at start is one clean `InsufficientStorageError` (exit 1), not a traceback:
    whether it strikes creating the home, the token or the lock, or inside the run."""
    try:
        yield
    except OSError as exc:
        if not is_no_space(exc):
            raise
        raise InsufficientStorageError(f"the home's disk is full ({home.root}): {exc.strerror}") from None
    except BaseExceptionGroup as group:
        full, rest = group.split(is_no_space)
        if full is None or rest is not None:
            raise
        raise InsufficientStorageError(f"the home's disk is full ({home.root}): {leaves(full)[0]}") from None


# How long the HTTP server may take to let go of its connections after a stop.
_SHUTDOWN_GRACE_SECONDS = 5.0
# After the loop: removing the state file and flushing the log (log.py gives that 2 s).
_EXIT_CLEANUP_SECONDS = 3.0


@attrs.define
class _StateFile:
    """`gateway.state.json`: how the CLI finds the running gateway (pid, port, state). A write
    that fails (ENOSPC, EIO) is logged and the gateway goes on: the file is a convenience for
    the CLI, and a full disk must never kill a drain (issue 25, finding 1)."""

    home: Home
    log: EventLog

    def write(self, fields: dict[str, Any]) -> None:
        try:
            # mode 0644: nothing secret in it; the token lives in its own 0600 file.
            atomic_write_json(self.home.state_path, fields)
        except OSError as exc:
            self.log.warn("STATE", "Cannot write gateway.state.json; the CLI may see an older state", error=str(exc))

    def remove(self) -> None:
        try:
            self.home.state_path.unlink(missing_ok=True)
        except OSError as exc:
            self.log.warn("STATE", "Cannot remove gateway.state.json", error=str(exc))


@attrs.define(eq=False)
class ExitBackstop:
    """The stop's last resort, owned by no cancel scope: a timer on an OS thread of its own,
    armed when a stop is asked for, which ends the process with `os._exit` if it is still
    there when the drain's budget plus a bounded cleanup has passed. A hung disk can hold a
    thread the loop must wait for (the state file's write is deliberately not abandonable) and
    the exit's own unlink; a task-based backstop is cancelled with the nursery it lives in
    (issue 25, finding 5). Arming again only ever brings the moment closer."""

    log: EventLog
    # Exit status when it fires: 0 once the gateway had stopped (its work drained, only the
    # leaving was stuck), 1 while it had not.
    stopped: bool = False
    _timer: threading.Timer | None = None
    _due: float = math.inf

    def arm(self, seconds: float, why: str, *, stopped: bool = False) -> None:
        self.stopped = self.stopped or stopped
        due = time.monotonic() + seconds
        if due >= self._due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._due = due
        self._timer = threading.Timer(seconds, self._fire, args=(seconds, why))
        self._timer.name, self._timer.daemon = "exit-backstop", True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._due = None, math.inf

    def _fire(self, seconds: float, why: str) -> None:
        code = 0 if self.stopped else 1
        self.log.error("SHUTDOWN", f"Forced exit: {why} did not finish within {seconds:g}s (os._exit)", exitCode=code)
        self.log.close(timeout=1.0)
        os._exit(code)


@attrs.define(eq=False)
class GatewayProcess:
    gateway: Gateway
    server: HttpServer
    home: Home
    notifier: Notifier
    log: EventLog
    backstop: ExitBackstop = attrs.Factory(lambda self: ExitBackstop(self.log), takes_self=True)
    started_at: str = attrs.Factory(lambda: _iso_now())
    # What systemd was last told (see `_notify`).
    _ready_generation: int = 0
    _reload_reported: bool = False

    async def run(self) -> int:
        watch = LoopWatch(self.log, threshold=lambda: self.gateway.config.gateway.loop_block_warn_ms / 1000)
        self.gateway.loop_watch = watch
        try:
            with watch.installed():
                await self._serve()
        except BaseExceptionGroup as group:
            # e.g. the port is taken, or the cluster database is unreachable: one clean
            # `ErrorName: message`, not a traceback. Raised here, outside every nursery, so no
            # nursery wraps it into a group again.
            error = only_gateway_error(group)
            if error is None:
                raise
            raise error from None
        finally:
            # The loop is done; what follows (the exit's cleanup) is the caller's to bound.
            self.backstop.disarm()
        self.notifier.stopping("stopped")
        return 0

    async def _serve(self) -> None:
        async with trio.open_nursery() as helpers:
            await helpers.start(self._handle_signals)
            helpers.start_soon(self._publish_state)
            helpers.start_soon(self._exit_backstop)
            helpers.start_soon(self._arm_backstop_on_stop)
            if self.notifier.watchdog_interval is not None:
                helpers.start_soon(self._ping_watchdog, self.notifier.watchdog_interval)
            try:
                await self.gateway.serve()
            finally:
                helpers.cancel_scope.cancel()

    async def _exit_backstop(self) -> None:
        """The one wait on the stop path that is not ours to bound: hypercorn writes a response
        inside a shielded scope with no timeout, so a client that stops reading a large answer
        would hold the root nursery open forever. Once the gateway has stopped (its work is
        drained and its state on disk), give the server a grace period, then leave."""
        await self.gateway.state.wait_value("stopped")
        # From here on a forced exit is a stop that completed, and what is left is bounded from
        # now (sooner than from the request when the drain was quick).
        self.backstop.arm(_SHUTDOWN_GRACE_SECONDS + _EXIT_CLEANUP_SECONDS, "the stop", stopped=True)
        await trio.sleep(_SHUTDOWN_GRACE_SECONDS)
        self.log.error("SHUTDOWN", f"HTTP connections still open {_SHUTDOWN_GRACE_SECONDS:g}s after the stop; exiting")
        _StateFile(self.home, self.log).remove()
        self.log.close()
        os._exit(0)

    async def _arm_backstop_on_stop(self) -> None:
        """Arms `ExitBackstop` once a stop is asked for (by a signal, the CLI or the API): the
        drain's budget, its cleanup, the HTTP server's grace and the exit's own cleanup."""
        await self.gateway.state.wait_value(lambda _state: self._stop_budget() is not None)
        self._arm_for_stop()

    def _arm_for_stop(self) -> None:
        budget = self._stop_budget()
        if budget is not None:
            self.backstop.arm(budget, "the stop")

    def _stop_budget(self) -> float | None:
        if self.gateway.state.value == "stopped":
            return _SHUTDOWN_GRACE_SECONDS + _EXIT_CLEANUP_SECONDS
        drain = self.gateway.draining
        if drain is None or drain.kind != "stop":
            return None
        cleanup = self.gateway.config.gateway.drain.cleanup_timeout_seconds
        work = 0.0 if drain.force else drain.timeout_seconds
        return work + cleanup + _SHUTDOWN_GRACE_SECONDS + _EXIT_CLEANUP_SECONDS

    # --- signals -------------------------------------------------------------------------

    async def _handle_signals(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            task_status.started()
            interrupts = 0
            async for signum in signals:
                if signum == signal.SIGINT:
                    interrupts += 1
                self._on_signal(signum, interrupts)

    def _on_signal(self, signum: int, interrupts: int) -> None:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            self.log.info("SIGNAL", f"{name} received; graceful restart")
            self.gateway.request_drain("restart")
        elif interrupts >= 2:
            # The operator pressed Ctrl-C twice: they do not want to wait for the drain.
            self.log.warn("SIGNAL", f"{name} received again; forced stop")
            self.gateway.request_drain("stop", force=True)
            self._arm_for_stop()
        else:
            self.log.info("SIGNAL", f"{name} received; graceful stop (press Ctrl-C again to force)")
            self.gateway.request_drain("stop")
            self._arm_for_stop()

    # --- state file and systemd ----------------------------------------------------------

    async def _publish_state(self) -> None:
        """Write the state file (and tell systemd) whenever the state or the generation has
        changed since the last write. Keyed on both: a whole restart can happen while a write
        is in its thread on a busy machine (running, draining, running again), and waiting for
        the next *different state* would then leave the file at the old generation for good."""
        state_file = _StateFile(self.home, self.log)
        published: tuple[State, int] | None = None

        def changed(state: State) -> bool:
            return (state, self.gateway.generation_number) != published

        while True:
            await self.gateway.state.wait_value(changed)
            state, generation = published = (self.gateway.state.value, self.gateway.generation_number)
            # Deliberately NOT abandonable (WAITS.md): an abandoned write could land after the
            # stop has removed the state file, leaving a stale one that says a dead process
            # runs. It is one small atomic write to the home directory; on a hung disk it is
            # `ExitBackstop` that bounds the stop.
            await trio.to_thread.run_sync(
                state_file.write, self._state_fields(state, generation), abandon_on_cancel=False
            )
            # What was written, not what is current: the next round reports what changed since.
            self._notify(state, generation)

    def _state_fields(self, state: State, generation: int) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "bind": self.server.bind,
            "port": self.server.bound_port,
            "url": self.server.urls[0] if self.server.urls else None,
            "state": state,
            "generation": generation,
            "startedAt": self.started_at,
            "updatedAt": _iso_now(),
        }

    def _notify(self, state: State, generation: int) -> None:
        if state == "running" and generation != self._ready_generation:
            if self._ready_generation and not self._reload_reported:
                # A quick restart can pass through "draining" before we look: systemd
                # still needs RELOADING=1 before the READY=1 that ends the reload.
                self.notifier.reloading("restarted")
            self.notifier.ready(f"generation {generation} accepting work")
            self._ready_generation, self._reload_reported = generation, False
        elif state == "draining":
            drain = self.gateway.draining
            # No drain request left means it already completed into a new generation: only a
            # restart does that (a stop keeps its request to the end).
            if drain is None or drain.kind == "restart":
                self.notifier.reloading("draining for restart")
                self._reload_reported = True
            else:
                self.notifier.stopping("draining for stop")

    async def _ping_watchdog(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await trio.sleep(interval)


def _iso_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
