"""One generation's delivery side as the runtime sees it (`runtime.gateway.DeliveryService`):
`QueueDelivery` holds the outbox turns write to and the worker that empties the file queue,
and answers the counts `/v1/status` and `/metrics` show. Cluster mode has its own
(`cluster.pg_delivery.PgDelivery`) over the same worker.
"""

from __future__ import annotations

import contextlib
import random
from typing import Protocol

import attrs
import trio

from trio_gateway.delivery.outbox import Outbox, text_chunk_limits
from trio_gateway.delivery.worker import ChannelLookup, DeliveryWorker, OutcomeTally
from trio_gateway.log import EventLog
from trio_gateway.policy.config import Config
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.disk import StorageHealth
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry


class ClosableChannels(ChannelLookup, Protocol):
    async def aclose(self) -> None: ...


@attrs.define
class QueueDelivery:
    """One generation's delivery side (`gateway.DeliveryService`): the outbox turns write to
    and the worker that empties the queue, over the same `DeliveryQueue` object (one per
    process, so `recover()` knows which of its own claims are live)."""

    outbox: Outbox
    worker: DeliveryWorker
    channels: ClosableChannels
    _failed: int = 0

    @classmethod
    def build(
        cls,
        queue: DeliveryStore,
        channels: ClosableChannels,
        config: Config,
        clock: WallClock,
        log: EventLog,
        work: WorkRegistry,
        rng: random.Random | None = None,
        storage: StorageHealth | None = None,
        outcomes: OutcomeTally | None = None,
    ) -> QueueDelivery:
        worker = DeliveryWorker.for_config(
            queue, channels, config, clock, log, work, rng, outcomes=outcomes or OutcomeTally()
        )
        outbox = Outbox(
            queue,
            config.agents,
            clock,
            log,
            on_enqueued=worker.notify,
            storage=storage or StorageHealth(),
            chunk_limits=text_chunk_limits(config),
        )
        return cls(outbox, worker, channels)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.worker.run)
            task_status.started()
            nursery.start_soon(self._count_failed)

    async def _count_failed(self) -> None:
        while True:
            with contextlib.suppress(OSError):  # a count for /v1/status only: keep the last one
                self._failed = len(await self.worker.queue.list_failed())
            await trio.sleep(self.worker.config.rescan_interval_seconds)

    def counts(self) -> dict[str, int]:
        return {"pending": self.worker.pending_count(), "failed": self._failed}

    def outcome_counts(self) -> dict[tuple[str, str], int]:
        """Attempts by (channel, outcome) since the process started (`/metrics`)."""
        return self.worker.outcomes.counts()

    @property
    def store(self) -> DeliveryStore:
        return self.worker.queue

    async def aclose(self) -> None:
        await self.channels.aclose()
