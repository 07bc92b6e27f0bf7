"""This node in the cluster: its row in `nodes`, its heartbeat, the takeover of dead nodes'
claims, and `cluster status`.

The node runs in the gateway's root nursery (as one of its `servers`), across generations: a
restart drains work, not membership. It heartbeats every `heartbeatSeconds`, and every
`pollSeconds` it takes over the claims and pending sessions of nodes silent for
`deadAfterSeconds` or gone (the lease is only a backstop: a time-only rescue would take live
work from a slow node). At exit, shielded and bounded, it
releases whatever it still holds and marks itself stopped, so peers resume at once instead of
waiting out `deadAfterSeconds`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from trio_gateway.cluster import schema
from trio_gateway.cluster.db import CANCEL_BOUND_SECONDS, Conn, Database
from trio_gateway.cluster.leases import Leases
from trio_gateway.cluster.notify import RELEASED, TURN, Notifier, notify
from trio_gateway.cluster.pg_queue import PgDeliveryQueue
from trio_gateway.cluster.pg_sessions import PgSessionStore
from trio_gateway.errors import ClusterDatabaseError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import ClusterConfig
from trio_gateway.storage.base import HandedOff
from trio_gateway.storage.sessions import SessionRecord


def default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@attrs.define(eq=False)
class ClusterNode:
    db: Database
    config: ClusterConfig
    node_id: str
    log: EventLog
    queue: PgDeliveryQueue
    leases: Leases
    sessions: PgSessionStore
    # The gateway's wall clock, bound when the gateway starts serving.
    now: Callable[[], dt.datetime]
    state: Callable[[], tuple[str, int]] = lambda: ("running", 0)
    ready: bool = False
    # LISTEN/NOTIFY wake-ups; None on trio's MockClock (inline database calls), where the
    # polls alone move work between nodes.
    notifier: Notifier | None = None

    @classmethod
    def create(
        cls, db: Database, config: ClusterConfig, log: EventLog, now: Callable[[], dt.datetime], *, lease_seconds: float
    ) -> ClusterNode:
        node_id = config.node_id or default_node_id()
        queue = PgDeliveryQueue(
            db, node_id, log, now, lease_seconds=lease_seconds, dead_after_seconds=config.dead_after_seconds
        )
        leases = Leases(db, node_id, config.dead_after_seconds)
        notifier = None
        if not db.inline and db.conninfo:
            # Probed after a heartbeat's silence: a lost listener is found as soon as a lost peer.
            probe = max(1.0, config.heartbeat_seconds)
            notifier = Notifier(db.conninfo, log, node_id, probe_seconds=probe)
        sessions = PgSessionStore(db, leases, log, now)
        queue.fence = sessions  # a turn's notice is written under its session's lease
        return cls(db, config, node_id, log, queue, leases, sessions, now, notifier=notifier)

    def on_peers(self, channel: str, wake: Callable[[], None]) -> Callable[[], None]:
        """`wake()` at each notification of `channel` sent by another node (and after each
        reconnection of the listener); returns the unsubscribe function (a no-op without one)."""
        if self.notifier is None:
            return lambda: None
        return self.notifier.on(channel, lambda sender: None if sender == self.node_id else wake())

    async def start(self) -> None:
        """Connect, migrate, register, and take back claims an earlier life of this node id
        left behind. Raises `ClusterDatabaseError` when the database cannot be used."""
        await self.db.open()
        found, now_at = await self.db.run(schema.migrate)
        if found != now_at:
            self.log.info("CLUSTER", f"Database schema migrated from version {found} to {now_at}")
        await self.db.run(self._register)
        released = await self.queue.release_own() + await self.leases.release_all()
        if released:
            self.log.warn(
                "CLUSTER", f"Released {released} claim(s) and lease(s) left by an earlier life of node {self.node_id}"
            )
        self.ready = True
        self.log.info("CLUSTER", f"Node {self.node_id} joined", backend="postgres")

    def _register(self, conn: Conn) -> None:
        # Heartbeats are the database's `now()`, as is every judgement of them (SPEC 12).
        conn.execute(
            "INSERT INTO nodes (node_id, state, host, pid, started_at, heartbeat_at)"
            " VALUES (%s, 'running', %s, %s, now(), now())"
            " ON CONFLICT (node_id) DO UPDATE SET state = 'running', host = EXCLUDED.host, pid = EXCLUDED.pid,"
            " started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at",
            (self.node_id, socket.gethostname(), os.getpid()),
        )

    async def heartbeat(self) -> None:
        state, generation = self.state()

        def beat(conn: Conn) -> None:
            conn.execute(
                "UPDATE nodes SET heartbeat_at = now(), state = %s, generation = %s WHERE node_id = %s",
                (state, generation, self.node_id),
            )

        # A stop cancels the heartbeat: it leaves at once (its query is cancelled behind it),
        # so the stop's bounded leave starts without waiting for a hung database.
        await self.db.run(beat, wait_for_cancel=False)

    async def run(self) -> None:
        """Heartbeat until cancelled; then leave the cluster (bounded)."""
        try:
            while True:
                try:
                    await self.heartbeat()
                    await self.sessions.forget_old_outcomes()
                except ClusterDatabaseError as exc:
                    self.log.error("CLUSTER", "Heartbeat failed; retrying", node=self.node_id, error=str(exc))
                await trio.sleep(self.config.heartbeat_seconds)
        finally:
            # One bound for the whole leave, the pool's close included: with the database hung
            # a stop takes its drain budget plus this, not plus a bound per call (issue 25).
            with trio.move_on_after(CANCEL_BOUND_SECONDS, shield=True) as bound:
                await self.leave()
            if bound.cancelled_caught:
                self.log.error(
                    "CLUSTER",
                    f"Could not leave the cluster within {CANCEL_BOUND_SECONDS:g}s; peers take this node's"
                    " work once its heartbeat is older than deadAfterSeconds",
                    node=self.node_id,
                )

    async def sweep(self, adopt: Callable[[list[SessionRecord]], Awaitable[None]]) -> None:
        """At the short poll: take over the delivery claims of dead nodes, and adopt sessions
        left with turns pending. Run this often (not at the heartbeat) so work moves within
        `deadAfterSeconds` + `pollSeconds` of a death, and within `pollSeconds` of a leave."""
        woken = trio.Event()

        def wake() -> None:
            woken.set()

        unsubscribe = self.on_peers(RELEASED, wake)  # a peer released its sessions: adopt now
        try:
            while True:
                try:
                    await self.queue.recover()
                    await self.sessions.adopt_orphans(adopt)
                except ClusterDatabaseError as exc:
                    self.log.error("CLUSTER", "Takeover sweep failed; retrying", node=self.node_id, error=str(exc))
                with trio.move_on_after(self.config.poll_seconds):
                    await woken.wait()
                woken = trio.Event()
        finally:
            unsubscribe()

    async def take_turns(self, take: Callable[[list[HandedOff]], Awaitable[None]]) -> None:
        """Turns peers accepted for sessions this node owns (SPEC 12): looked for at each
        notification addressed to this node, at a reconnection of the listener, and at the
        poll (the backstop); `take` moves them into their sessions and starts them."""
        woken = trio.Event()

        def wake(owner: str | None) -> None:
            if owner in (None, self.node_id):
                woken.set()

        unsubscribe = self.notifier.on(TURN, wake) if self.notifier is not None else (lambda: None)
        try:
            while True:
                try:
                    handed = await self.sessions.handed_off()
                    if handed:
                        await take(handed)
                except ClusterDatabaseError as exc:
                    self.log.error("CLUSTER", "Looking for handed-off turns failed; retrying", error=str(exc))
                with trio.move_on_after(self.config.poll_seconds):
                    await woken.wait()
                woken = trio.Event()
        finally:
            unsubscribe()

    async def leave(self, *, forget: bool = False) -> None:
        """Release every claim and mark this node stopped (or, for a CLI command's node,
        remove its row): peers take its work at once."""
        sql = "DELETE FROM nodes" if forget else "UPDATE nodes SET state = 'stopped'"
        try:
            released = await self.queue.release_own() + await self.leases.release_all()

            def gone(conn: Conn) -> None:
                conn.execute(f"{sql} WHERE node_id = %s", (self.node_id,))
                notify(conn, RELEASED, self.node_id)  # peers adopt what this node left, now

            await self.db.run(gone)
            if not forget:
                self.log.info("CLUSTER", f"Node {self.node_id} left the cluster", released=released)
        except ClusterDatabaseError as exc:
            self.log.error("CLUSTER", "Could not leave the cluster cleanly", error=str(exc))
        finally:
            # Within the caller's bound, not a new one: a shield of its own would let the close
            # outlast it. Given up, the pool's threads are abandoned (the process is leaving).
            with trio.CancelScope(deadline=_within_caller(CANCEL_BOUND_SECONDS), shield=True):
                await self.db.close()

    async def status(self) -> dict[str, Any]:
        nodes = await cluster_status(self.db, self.config.dead_after_seconds)
        return {"backend": "postgres", "nodeId": self.node_id, "nodes": nodes}

    def describe(self) -> dict[str, Any]:
        return {"backend": "postgres", "nodeId": self.node_id}

    async def serve(self, gateway: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """As a gateway server: joins before generation 1 starts, leaves after the last."""
        self.now = self.queue.now = self.sessions.now = lambda: gateway.wall.now()
        self.state = lambda: (str(gateway.state.value), int(gateway.generation_number))
        await self.start()
        async with trio.open_nursery() as nursery:
            if self.notifier is not None:
                await nursery.start(self.notifier.run)
            task_status.started()
            nursery.start_soon(self.sweep, gateway.adopt_sessions)
            nursery.start_soon(self.take_turns, gateway.take_handoffs)
            await self.run()


def _within_caller(seconds: float) -> float:
    """`seconds` from now, or the caller's own deadline when that is sooner (a cancelled
    caller: none left)."""
    return min(trio.current_time() + seconds, trio.current_effective_deadline())


async def cluster_status(db: Database, dead_after_seconds: float) -> list[dict[str, Any]]:
    """`cluster status`: every node with its state, heartbeat age, sessions owned, claims held.
    A node silent for `dead_after_seconds` is shown as "dead" whatever it last said. Ages are
    on the database's clock, like every judgement of death."""

    def read(conn: Conn) -> list[dict[str, Any]]:
        rows = conn.execute(
            "SELECT n.node_id, n.state, n.host, n.pid, n.generation, extract(epoch FROM now() - n.heartbeat_at),"
            " n.started_at,"
            " (SELECT count(*) FROM deliveries d WHERE d.claim_node = n.node_id),"
            " (SELECT count(*) FROM leases l WHERE l.node_id = n.node_id AND l.key LIKE 'session:%%')"
            " FROM nodes n ORDER BY n.node_id"
        ).fetchall()
        nodes = []
        for node_id, state, host, pid, generation, age_seconds, started_at, claims, sessions in rows:
            age = float(age_seconds)  # type: ignore[arg-type]
            if state != "stopped" and age > dead_after_seconds:
                state = "dead"
            nodes.append(
                {
                    "nodeId": node_id,
                    "state": state,
                    "host": host,
                    "pid": pid,
                    "generation": generation,
                    "heartbeatAgeSeconds": round(age, 3),
                    "startedAt": started_at.isoformat().replace("+00:00", "Z"),  # type: ignore[attr-defined]
                    "claimsHeld": claims,
                    "sessionsOwned": sessions,
                }
            )
        return nodes

    return await db.run(read)
