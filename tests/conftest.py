"""Shared test setup. The gateway fixtures are the ones users get from the installed plugin."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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
