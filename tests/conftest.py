"""Shared test setup. The gateway fixtures are the ones users get from the installed plugin."""

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from helpers import Proc, gateway_processes
from hypothesis import HealthCheck, settings

from trio_gateway.sim.postgres import PgServer, missing_reason

pytest_plugins = ["trio_gateway.testing.plugin"]

# Hypothesis's per-example deadline (200 ms) and `too_slow` health check are wall-clock figures
# a busy machine can miss: no test here may fail for that. A test's own @settings still
# overrides what it names.
settings.register_profile("busy-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("busy-machine")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL for the whole run (cluster mode, SPEC 12), started on first use.
    Skips only when the server binaries are truly absent; `.ci/run` installs them."""
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PgServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_dsn(pg_server: PgServer) -> str:
    """A fresh, empty database of its own for each test."""
    return pg_server.create_database()


# Every test fails on file I/O inside a Trio task step of the gateway's own code
# (`trio_gateway.testing.io_guard`, issue 25): its disk work belongs in threads (the harness's
# inline runners count as such). Caught by what was called, never by wall time. Left out:
UNGUARDED_MODULES = {
    # They do file I/O on the loop on purpose, to prove the guard and the loop watch see it.
    "test_io_guard": "proves the guard",
    "test_loop_watch": "calls the stuck-loop dump (an OS thread's job) from the loop",
    # Builds a wheel and runs it in a fresh venv (minutes): not run under the guard yet.
    "test_container": "not run under the guard yet",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        names = getattr(item, "fixturenames", None)
        guarded = module is not None and module.__name__ not in UNGUARDED_MODULES
        if guarded and names is not None and "no_file_io_on_the_loop" not in names:
            names.append("no_file_io_on_the_loop")


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """`start_gateway(home=None, **gateway)`: a real gateway process (tests/helpers.py)."""
    yield from gateway_processes(tmp_path)


# --- every test has a bound ------------------------------------------------------------------------
# A broken promise (a drain without its deadline, a wait on an event nobody sets) must fail its
# test by name, not hang the run until CI's job timeout. A trio test is watched from a thread
# that cancels the test's scope once it has run for a virtual day (MockClock: a drain that never
# ends gets there in a second or two of wall time, its timers jumping) or 120 s of wall time (a
# loop that keeps the virtual clock from jumping). Watched from outside, not as a deadline of the
# test's own: the autojump clock jumps to the next deadline whenever every task waits on
# something else (a thread, a socket), and would jump straight to the bound; virtual time that
# passes while a worker thread runs is not counted either. pytest-timeout
# (`timeout` in pyproject.toml, 180 s) bounds every other test, and is the backstop of a trio
# test whose loop is blocked outright. Generous: a busy machine's slow test is never one that hangs.
VIRTUAL_BOUND_SECONDS = 86_400.0
WALL_BOUND_SECONDS = 120.0
WATCH_EVERY_SECONDS = 0.5


class TestBoundExceeded(Exception):
    """The test ran past its bound: what it waits for never came."""


TestFn = Callable[..., Awaitable[Any]]


def bounded(test: TestFn) -> TestFn:
    """The async test function `test`, under the bounds (its fixtures are pytest-trio's)."""

    @functools.wraps(test)
    async def run_bounded(**kwargs: Any) -> Any:
        return await _within_bounds(partial(test, **kwargs))

    return run_bounded


@attrs.define
class _Watch:
    """What the watchdog thread saw: which bound ran out, if one did."""

    scope: trio.CancelScope
    clock: trio.abc.Clock
    token: trio.lowlevel.TrioToken
    # trio.to_thread's default limiter: while a worker thread runs (Hypothesis driving a
    # gateway from a thread), the autojump clock races from timer to timer as the test waits
    # on real work, so that virtual time is not the test's own and is not counted.
    threads: trio.CapacityLimiter
    finished: threading.Event = attrs.Factory(threading.Event)
    exceeded: str | None = None

    def run(self) -> None:
        virtual = isinstance(self.clock, trio.testing.MockClock)
        counted, seen, wall_started = 0.0, self.clock.current_time(), time.monotonic()
        while not self.finished.wait(WATCH_EVERY_SECONDS):
            now = self.clock.current_time()
            if self.threads.borrowed_tokens == 0:
                counted += now - seen
            seen = now
            if virtual and counted > VIRTUAL_BOUND_SECONDS:
                self.exceeded = f"{VIRTUAL_BOUND_SECONDS:g} virtual seconds (MockClock)"
            elif time.monotonic() - wall_started > WALL_BOUND_SECONDS:
                self.exceeded = f"{WALL_BOUND_SECONDS:g} s of wall time"
            else:
                continue
            cancel = partial(self.scope.cancel, reason=f"the test's bound ran out: {self.exceeded}")
            with contextlib.suppress(trio.RunFinishedError):  # it ended meanwhile
                self.token.run_sync_soon(cancel)
            return


async def _within_bounds(fn: Callable[[], Awaitable[Any]]) -> Any:
    with trio.CancelScope() as scope:
        watch = _Watch(
            scope,
            trio.lowlevel.current_clock(),
            trio.lowlevel.current_trio_token(),
            trio.to_thread.current_default_thread_limiter(),
        )
        threading.Thread(target=watch.run, name="test-bound", daemon=True).start()
        try:
            result = await fn()
        finally:
            watch.finished.set()
    if watch.exceeded is None:
        return result
    raise TestBoundExceeded(f"still running after {watch.exceeded}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # before pytest-trio wraps the test in its runner
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    test = getattr(item, "obj", None)
    if item.get_closest_marker("trio") is not None and inspect.iscoroutinefunction(test):
        item.obj = bounded(test)  # type: ignore[attr-defined]
    yield
