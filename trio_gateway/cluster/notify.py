"""Wake-ups between nodes by PostgreSQL's LISTEN/NOTIFY (SPEC 12): a new delivery, a turn handed
to a session's owner, a released claim or session reach the other nodes at once; the polls
(`cluster.pollSeconds`) stay, as the backstop.

A write that should wake peers calls `notify(conn, CHANNEL, payload)` in its own transaction:
PostgreSQL delivers a notification only when that transaction commits, so a peer never wakes
for a write it cannot see yet, and a rolled-back write wakes nobody.

Each node listens on one dedicated connection (not the pool's: a LISTEN belongs to its session).
psycopg's async API is asyncio-only, so the connection is used by sync calls in worker threads,
each bounded: a wait for notifications blocks at most `slice_seconds`, after which the thread
ends by itself. A stop abandons the thread at once (never waits for it), and the connection is
closed by whichever side touches it last (`_Listen`): closing a libpq connection while another
thread is inside it would be a use-after-free, so nothing closes it from outside a call.

A connection that dies is seen at once (the wait raises); one that goes silent (a stopped
server, a cut network) is probed after `probe_seconds` without traffic, and a probe that does not
answer within `probe_bound_seconds` counts as lost. Lost, it is re-established with backoff, and
every subscriber is woken with `None` right after: "notifications may have been missed, look".

    notifier.on(DELIVERY, lambda payload: worker.wake())   # returns the unsubscribe function
    with notifier.subscribe(TURN) as turns:                # a task that waits on payloads
        async for payload in turns: ...                     # None: look at everything
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import TypeVar

import attrs
import psycopg
import trio

from trio_gateway.cluster.db import Conn
from trio_gateway.log import EventLog

T = TypeVar("T")

# Prefixed: the database may be shared with other programs that LISTEN too.
DELIVERY = "trio_gateway_delivery"  # an entry became claimable (enqueued, released, taken over)
TURN = "trio_gateway_turn"  # a turn was accepted for a session another node owns
RELEASED = "trio_gateway_released"  # a session or lease was released, or a node left
CHANNELS = (DELIVERY, TURN, RELEASED)

# A subscriber's payload, or None: "the connection was (re)established, anything may have been
# missed": look at the database as a poll would.
Wake = Callable[[str | None], None]


def notify(conn: Conn, channel: str, payload: str = "") -> None:
    """Send `channel` a notification in the caller's transaction: delivered on its commit only."""
    conn.execute("SELECT pg_notify(%s, %s)", (channel, payload))


@attrs.define(eq=False)
class Subscription:
    """One channel's payloads for a task that waits on them. Bounded: past `limit` unread, the
    backlog collapses to one `None` (look at everything), so a slow reader costs no memory."""

    limit: int = 1024
    _pending: deque[str | None] = attrs.Factory(deque)
    _arrived: trio.Event = attrs.Factory(trio.Event)

    def put(self, payload: str | None) -> None:
        if payload is None or len(self._pending) >= self.limit:
            self._pending.clear()
            self._pending.append(None)
        else:
            self._pending.append(payload)
        self._arrived.set()

    async def get(self) -> str | None:
        while not self._pending:
            await self._arrived.wait()
            self._arrived = trio.Event()
        return self._pending.popleft()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> str | None:
        return await self.get()


class _Lost(Exception):
    """The notification connection stopped answering (a probe ran past its bound)."""


@attrs.define(eq=False)
class _Listen:
    """The listening connection, used by one thread call at a time; closed by the last user:
    the trio side when no call is in it, else the call's own thread as it leaves."""

    conn: Conn
    _lock: threading.Lock = attrs.Factory(threading.Lock)
    _busy: bool = False
    _doomed: bool = False

    def call(self, fn: Callable[[Conn], T]) -> T:
        # Busy from inside the thread: a call abandoned before its thread ran leaves nothing
        # behind, and one that starts after the close touches nothing.
        with self._lock:
            if self._doomed:
                raise _Lost("the notification connection was closed")
            self._busy = True
        try:
            return fn(self.conn)
        finally:
            with self._lock:
                self._busy = False
                if self._doomed:
                    self.conn.close()

    def close(self) -> None:
        with self._lock:
            self._doomed = True
            if not self._busy:
                self.conn.close()


def _wait(seconds: float) -> Callable[[Conn], list[tuple[str, str]]]:
    def wait(conn: Conn) -> list[tuple[str, str]]:
        # stop_after=1: return with the first packet's notifications, so they are handled now.
        return [(n.channel, n.payload) for n in conn.notifies(timeout=seconds, stop_after=1)]

    return wait


def _probe(conn: Conn) -> None:
    conn.execute("SELECT 1")


@attrs.define(eq=False)
class Notifier:
    conninfo: str
    log: EventLog
    node_id: str = ""
    connect_timeout: float = 2.0
    slice_seconds: float = 0.25
    probe_seconds: float = 5.0
    probe_bound_seconds: float = 2.0
    # Short: the polls cover the gap, but every second without a listener is a second of polls.
    backoff_seconds: tuple[float, float] = (0.1, 2.0)
    connected: bool = False
    # The listening backend's process id (`pg_stat_activity.pid`), while connected.
    backend_pid: int | None = None
    # Connections established after the first (each followed by a wake of every subscriber).
    reconnects: int = 0
    _handlers: dict[str, list[Wake]] = attrs.Factory(dict)
    # Threads of its own: an abandoned call keeps its token until its thread ends (at most a
    # slice, or a probe stuck on a stopped server), never starving the database's calls.
    _threads: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(4))

    # --- subscribing ----------------------------------------------------------------------

    def on(self, channel: str, wake: Wake) -> Callable[[], None]:
        """Call `wake(payload)` on the trio thread for each notification of `channel` (and
        `wake(None)` after each (re)connection). Returns the function that unsubscribes."""
        handlers = self._handlers.setdefault(channel, [])
        handlers.append(wake)
        return lambda: handlers.remove(wake) if wake in handlers else None

    @contextlib.contextmanager
    def subscribe(self, channel: str, *, limit: int = 1024) -> Iterator[Subscription]:
        subscription = Subscription(limit)
        unsubscribe = self.on(channel, subscription.put)
        try:
            yield subscription
        finally:
            unsubscribe()

    def _dispatch(self, channel: str, payload: str | None) -> None:
        for wake in list(self._handlers.get(channel, ())):
            wake(payload)

    def _wake_all(self) -> None:
        for channel in list(self._handlers):
            self._dispatch(channel, None)

    # --- listening ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled, reconnecting with backoff. Reports started after the first
        attempt, connected or not: the polls cover a database that is away at start."""
        started = False
        failures = 0
        while True:
            try:
                listen = await self._connect()
            except (psycopg.Error, OSError, trio.TooSlowError) as exc:
                failures += 1
                delay = min(self.backoff_seconds[1], self.backoff_seconds[0] * 2 ** (failures - 1))
                if failures == 1 or failures % 10 == 0:
                    self.log.warn(
                        "CLUSTER", "Cannot open the notification connection; polling meanwhile", error=_say(exc)
                    )
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(delay)
                continue
            if started:
                self.reconnects += 1
                self.log.info("CLUSTER", "Notification connection re-established", node=self.node_id)
            else:
                task_status.started()
                started = True
            failures = 0
            await self._serve(listen)

    async def _serve(self, listen: _Listen) -> None:
        self.connected, self.backend_pid = True, listen.conn.info.backend_pid
        try:
            self._wake_all()  # nothing sent while this node was not listening is lost: look now
            await self._listen(listen)
        except (psycopg.Error, OSError, _Lost) as exc:
            self.log.warn("CLUSTER", "Notification connection lost; reconnecting", error=_say(exc))
        finally:
            self.connected, self.backend_pid = False, None
            listen.close()

    async def _connect(self) -> _Listen:
        def connect() -> Conn:
            conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))
            try:
                for channel in CHANNELS:
                    conn.execute(f"LISTEN {channel}")
            except BaseException:
                conn.close()
                raise
            return conn

        # A connect that outlives its bound (the server stopped mid-handshake) is abandoned;
        # libpq's connect_timeout ends its thread.
        with trio.fail_after(self.connect_timeout + self.probe_bound_seconds):
            conn = await trio.to_thread.run_sync(connect, abandon_on_cancel=True, limiter=self._threads)
        return _Listen(conn)

    async def _call(self, listen: _Listen, fn: Callable[[Conn], T]) -> T:
        try:
            return await trio.to_thread.run_sync(listen.call, fn, abandon_on_cancel=True, limiter=self._threads)
        except trio.Cancelled:
            listen.close()  # the abandoned thread closes it as it leaves (within a slice)
            raise

    async def _listen(self, listen: _Listen) -> None:
        heard = trio.current_time()
        while True:
            batch = await self._call(listen, _wait(self.slice_seconds))
            for channel, payload in batch:
                self._dispatch(channel, payload)
            if batch:
                heard = trio.current_time()
            elif trio.current_time() - heard >= self.probe_seconds:
                # Silence: a stopped server or a cut network says nothing; ask it.
                with trio.move_on_after(self.probe_bound_seconds) as bound:
                    await self._call(listen, _probe)
                if bound.cancelled_caught:
                    raise _Lost(f"no answer to a probe within {self.probe_bound_seconds:g}s")
                heard = trio.current_time()


def _say(exc: BaseException) -> str:
    # psycopg's messages may name the host and user, never the password.
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
