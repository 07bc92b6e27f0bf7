"""Calling PostgreSQL from trio: psycopg 3's sync API, one call per blocking-runner hand-off.

psycopg's async API is asyncio-only (psycopg#29), so every call is a plain function of one
pooled connection, run in a worker thread the caller may abandon when cancelled. A cancelled
call must not leave its query running (holding locks, holding the connection): in a shielded
scope bounded to `CANCEL_BOUND_SECONDS`, the query is cancelled on the server
(`conn.cancel_safe()`) and we wait for the thread to hand its connection back. Every call also
has a deadline: the server's `statement_timeout`, and a trio deadline a little past it, so a
database that stops answering cannot hold a drain past its one deadline.

On trio's MockClock the call runs inline (`inline=True`): a thread would let the autojump
clock fire deadlines while the query runs; an inline call advances virtual time by zero.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import TypeVar

import attrs
import psycopg
import trio
from psycopg_pool import ConnectionPool, PoolTimeout

from trio_gateway.errors import ClusterDatabaseError as DatabaseError
from trio_gateway.storage.atomic import inline

T = TypeVar("T")

# psycopg_pool logs every failed connection attempt as a warning; with no handler configured,
# Python prints each one to stderr. The gateway reports the outcome itself, in its own log.
logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())

CANCEL_BOUND_SECONDS = 2.0
# Past the server's statement timeout, how long trio waits before giving the call up itself
# (the network, the pool hand-off): the server's own cancel should have ended it by then.
_CALL_MARGIN_SECONDS = 2.0

Conn = psycopg.Connection[tuple[object, ...]]


@attrs.define(eq=False)
class _Call:
    conn: Conn | None = None
    finished: threading.Event = attrs.Factory(threading.Event)


def _cancel_behind(call: _Call) -> None:
    """The abandoned call's query cancelled on the server from a daemon thread nobody waits
    for (bounded by CANCEL_BOUND_SECONDS; its connection returns to the pool when it ends)."""
    conn = call.conn
    if conn is not None and not call.finished.is_set():
        cancel = threading.Thread(target=conn.cancel_safe, kwargs={"timeout": CANCEL_BOUND_SECONDS}, daemon=True)
        cancel.start()


@attrs.define(eq=False)
class Database:
    pool: ConnectionPool[Conn]
    statement_timeout: float
    inline: bool = False
    # The DSN, for a connection outside the pool (the LISTEN connection, `notify.py`).
    conninfo: str = ""
    # Threads of their own (like `disk.DiskRunners`): a thread abandoned to a hung database
    # keeps its limiter token until it ends, so a hung database starves only its own calls,
    # never the disks or HTTP reads on trio's default limiter. One call thread per pooled
    # connection (more would only queue in the pool); cancels have their own, so a full call
    # limiter never holds up cancelling a query.
    _calls: trio.CapacityLimiter = attrs.field(init=False)
    _cancels: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._calls = trio.CapacityLimiter(self.pool.max_size)
        self._cancels = trio.CapacityLimiter(self.pool.max_size)

    @classmethod
    def create(cls, dsn: str, *, statement_timeout: float, inline: bool = False, max_size: int = 16) -> Database:
        options = f"-c statement_timeout={int(statement_timeout * 1000)} -c idle_in_transaction_session_timeout="
        options += str(int((statement_timeout + _CALL_MARGIN_SECONDS) * 1000))
        pool: ConnectionPool[Conn] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            open=False,
            timeout=statement_timeout,
            kwargs={"options": options, "connect_timeout": max(2, int(statement_timeout))},
            name="trio-gateway",
        )
        return cls(pool, statement_timeout, inline, dsn)

    async def open(self) -> None:
        """Connect (bounded): a wrong DSN or a database that is down is a clear error."""
        try:
            await self._blocking(lambda: self.pool.open(wait=True, timeout=self.statement_timeout + 5))
        except Exception as exc:
            raise DatabaseError(f"cannot connect to the cluster database: {_describe(exc)}") from None

    async def close(self) -> None:
        await self._blocking(lambda: self.pool.close(timeout=CANCEL_BOUND_SECONDS))

    async def run(self, fn: Callable[[Conn], T], *, wait_for_cancel: bool = True) -> T:
        """`fn(conn)` in one transaction (committed when it returns, rolled back when it
        raises), with a deadline; cancelling the caller cancels the query. `wait_for_cancel`
        False: a cancelled caller leaves at once and the query is cancelled behind it (a
        periodic call whose cancel must not delay a stop: the heartbeat)."""
        call = _Call()

        def work() -> T:
            try:
                with self.pool.connection() as conn:
                    call.conn = conn
                    return fn(conn)
            finally:
                call.finished.set()

        # The caller's own deadline, not this call's: a server-side cancel may use its bound
        # after this call's deadline, never after the caller's (read now: once cancelled, it
        # reads as -inf).
        caller_deadline = trio.current_effective_deadline()
        try:
            if self.inline:
                return await inline(work)
            with trio.fail_after(self.statement_timeout + _CALL_MARGIN_SECONDS):
                return await self._in_thread(work, call, wait_for_cancel, caller_deadline)
        except trio.TooSlowError:
            raise DatabaseError(f"the cluster database did not answer within {self.statement_timeout:g}s") from None
        except psycopg.errors.QueryCanceled:
            raise DatabaseError(f"a statement ran past statement_timeout ({self.statement_timeout:g}s)") from None
        except psycopg.OperationalError as exc:
            raise DatabaseError(f"cluster database unavailable: {_describe(exc)}") from None
        except PoolTimeout as exc:
            raise DatabaseError(f"no free database connection: {_describe(exc)}") from None

    async def _in_thread(
        self, work: Callable[[], T], call: _Call, wait_for_cancel: bool = True, caller_deadline: float = math.inf
    ) -> T:
        try:
            return await trio.to_thread.run_sync(work, abandon_on_cancel=True, limiter=self._calls)
        except trio.Cancelled:
            if not wait_for_cancel:
                _cancel_behind(call)
                raise
            # Cancelling the query on the server is bounded, and never outlasts the caller's own
            # deadline: a caller out of time (a stop's bounded leave with the database hung)
            # abandons the connection instead of waiting another CANCEL_BOUND_SECONDS (issue 25).
            # A call that ran past its own statement deadline still gets the whole bound.
            deadline = min(trio.current_time() + CANCEL_BOUND_SECONDS, caller_deadline)
            with trio.CancelScope(deadline=deadline, shield=True):
                await self._cancel(call)
            raise

    async def _cancel(self, call: _Call) -> None:
        """Cancel the abandoned thread's query on the server and wait for its connection to
        go back to the pool (bounded by the caller's shielded scope)."""
        conn = call.conn
        if conn is not None and not call.finished.is_set():
            await trio.to_thread.run_sync(
                lambda: conn.cancel_safe(timeout=CANCEL_BOUND_SECONDS), abandon_on_cancel=True, limiter=self._cancels
            )
        await trio.to_thread.run_sync(
            lambda: call.finished.wait(CANCEL_BOUND_SECONDS), abandon_on_cancel=True, limiter=self._cancels
        )

    async def _blocking(self, fn: Callable[[], T]) -> T:
        if self.inline:
            return await inline(fn)
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=self._calls)


def _describe(exc: BaseException) -> str:
    # psycopg's messages may quote the DSN's host and user but never its password.
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
