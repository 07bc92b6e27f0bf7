"""Shared test setup. The gateway fixtures are the ones users get from the installed plugin."""

from collections.abc import Iterator

import pytest

from trio_gateway.testing.postgres import PgServer, missing_reason

pytest_plugins = ["trio_gateway.testing.plugin"]


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
