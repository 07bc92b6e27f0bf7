"""The delivery side of a generation in cluster mode: the file worker's attempt logic (send,
classify, ack / retry / dead letter, each in its own cancel scope), fed by batched claims of
due entries from the shared queue instead of a directory listing.

The dispatcher claims as many due entries as it has free slots, in one statement; with nothing
due it waits for a local enqueue, a peer's notification (an entry it enqueued, released or took
over: `notify.py`), or a short poll (`cluster.pollSeconds`), the backstop for what no
notification announces (a retry coming due) or a notification lost with its connection.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs
import trio

from trio_gateway.cluster.pg_queue import PgDeliveryQueue
from trio_gateway.delivery.outbox import Outbox, text_chunk_limits
from trio_gateway.delivery.service import ClosableChannels
from trio_gateway.delivery.worker import DeliveryWorker
from trio_gateway.errors import ClusterDatabaseError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import Config
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.base import Claimed, DeliveryStore
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry


@attrs.define
class PgDeliveryWorker(DeliveryWorker):
    pg: PgDeliveryQueue | None = None
    poll_seconds: float = 0.2
    pending: int = 0

    def notify(self, entry: DeliveryEntry) -> None:
        """A new or rescheduled entry: claim now if it is due; a later one the poll finds."""
        if entry.next_attempt_at <= self.clock.now():
            self._wake.set()

    def wake(self) -> None:
        """A peer made an entry claimable: claim now rather than at the next poll."""
        self._wake.set()

    def pending_count(self) -> int:
        return self.pending

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        assert self.pg is not None
        task_status.started()
        limiter = trio.Semaphore(self.config.concurrency)
        # Claim in batches: with most slots busy, wait for more to free up (each finishing
        # attempt wakes us) rather than paying one claim statement per freed slot.
        batch = max(1, self.config.concurrency // 2)
        async with trio.open_nursery() as nursery:
            while True:
                free = limiter.value
                claims = await self._claim(self.pg, free) if free >= batch else []
                for claimed in claims:
                    limiter.acquire_nowait()
                    nursery.start_soon(self._deliver_one, claimed, limiter)
                with trio.move_on_after(self.poll_seconds):
                    await self._wake.wait()
                self._wake = trio.Event()

    async def _claim(self, pg: PgDeliveryQueue, free: int) -> list[Claimed]:
        try:
            return await pg.claim_due(self.clock.now(), free)
        except ClusterDatabaseError as exc:
            # The database is away: the entries are safe in it; try again at the next poll.
            self.log.error("DELIVERY", "Claiming due entries failed; retrying", error=str(exc))
            return []

    async def _deliver_one(self, claimed: Claimed, limiter: trio.Semaphore) -> None:
        try:
            await self.deliver(claimed)
        except ClusterDatabaseError as exc:
            # Settling failed: the claim stays ours until its lease runs out, then it is
            # taken back and sent again (at least once).
            self.log.error("DELIVERY", f"id={claimed.entry.id} settling failed", error=str(exc))
        finally:
            limiter.release()
            self._wake.set()


@attrs.define
class PgDelivery:
    """One generation's delivery side in cluster mode (`gateway.DeliveryService`)."""

    outbox: Outbox
    worker: PgDeliveryWorker
    channels: ClosableChannels
    queue: PgDeliveryQueue
    # Subscribes `wake` to peers' delivery notifications; returns the unsubscribe function.
    on_peer_delivery: Callable[[Callable[[], None]], Callable[[], None]] = lambda _wake: lambda: None
    _failed: int = 0

    @classmethod
    def build(
        cls,
        queue: PgDeliveryQueue,
        channels: ClosableChannels,
        config: Config,
        clock: WallClock,
        log: EventLog,
        work: WorkRegistry,
        rng: random.Random | None = None,
        on_peer_delivery: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    ) -> PgDelivery:
        worker = PgDeliveryWorker.for_config(
            queue, channels, config, clock, log, work, rng, pg=queue, poll_seconds=config.cluster.poll_seconds
        )
        outbox = Outbox(
            queue, config.agents, clock, log, on_enqueued=worker.notify, chunk_limits=text_chunk_limits(config)
        )
        delivery = cls(outbox, worker, channels, queue)
        if on_peer_delivery is not None:
            delivery.on_peer_delivery = on_peer_delivery
        return delivery

    @property
    def store(self) -> DeliveryStore:
        return self.queue

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        unsubscribe = self.on_peer_delivery(self.worker.wake)  # this generation's worker only
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.worker.run)
                task_status.started()
                nursery.start_soon(self._count)
        finally:
            unsubscribe()

    async def _count(self) -> None:
        while True:
            try:
                counts = await self.queue.counts()
                self.worker.pending, self._failed = counts["pending"], counts["failed"]
            except ClusterDatabaseError:
                pass  # the claim loop reports the database's absence; status keeps the last figures
            await trio.sleep(self.worker.config.rescan_interval_seconds)

    def counts(self) -> dict[str, int]:
        return {"pending": self.worker.pending, "failed": self._failed}

    async def aclose(self) -> None:
        await self.channels.aclose()
