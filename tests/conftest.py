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


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """`start_gateway(home=None, **gateway)`: a real gateway process (tests/helpers.py)."""
    yield from gateway_processes(tmp_path)
