"""The `Outbox` (SPEC 7): what agents, cron and the edges call to send something. It routes
(from the requester's origin), validates the address, and writes the entry durably; the
worker is told at once, so a new entry is sent now rather than at the next rescan.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from trio_gateway.channels.registry import check_address
from trio_gateway.errors import DeliveryValidationError, InsufficientStorageError
from trio_gateway.log import EventLog
from trio_gateway.policy import routing
from trio_gateway.policy.config import AgentConfig
from trio_gateway.policy.entry import DeliveryEntry, DeliveryKind, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import DeliveryStore, OutcomeUnknown
from trio_gateway.storage.disk import StorageHealth, is_no_space
from trio_gateway.work.clock import WallClock

# A notice of accepted work that the queue disk refused is retried from this delay, doubling
# up to the maximum: a full disk is freed by a person, in minutes, not milliseconds.
ENQUEUE_RETRY_FIRST_SECONDS = 0.5
ENQUEUE_RETRY_MAX_SECONDS = 30.0


@attrs.define
class Outbox:
    """What agents, cron and the edges call to send something: route, validate, enqueue."""

    queue: DeliveryStore
    agents: dict[str, AgentConfig]
    clock: WallClock
    log: EventLog
    # The worker's `notify`, so a new entry is sent now rather than at the next rescan.
    on_enqueued: Callable[[DeliveryEntry], None] | None = None
    # Told while accepted work waits for a full queue disk, so intake refuses new work (507).
    storage: StorageHealth = attrs.Factory(StorageHealth)

    async def submit(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> DeliveryEntry:
        agent = self.agents.get(agent_id)
        if agent is None:
            raise DeliveryValidationError(f"no agent named {agent_id!r}")
        route = routing.resolve(origin, agent)
        if route.is_fallback:
            self.log.warn(
                "DELIVERY",
                f"No requester origin channel; delivering {kind} to agent {agent_id}'s first channel {route.channel}",
            )
        entry = self._entry(kind, route.channel, route.to, route.account_id, agent_id, origin, text, idempotency_key)
        await self._enqueue_until_kept(entry)
        return entry

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        """`delivery create` and `POST /v1/deliveries`: an explicit address, no routing."""
        if account_id is None and agent_id is not None and agent_id in self.agents:
            account_id = self.agents[agent_id].account_id
        entry = self._entry("manual", channel, to, account_id, agent_id, None, text, None)
        try:
            await self.queue.enqueue(entry)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            raise InsufficientStorageError(f"the delivery queue's disk is full: {exc.strerror}") from None
        except OutcomeUnknown as exc:
            raise InsufficientStorageError(f"the delivery queue's disk is not answering: {exc}") from None
        self._enqueued(entry)
        return entry

    async def _enqueue_until_kept(self, entry: DeliveryEntry) -> None:
        """Accepted work's notices are never dropped because the disk is full or stuck: the
        same entry (same id, so a write that did land is not doubled) is retried with backoff
        until it is on disk, or the caller is cancelled (a drain: the turn is kept for the
        next generation, its reply with it)."""
        delay = ENQUEUE_RETRY_FIRST_SECONDS
        attempt = 1
        while True:
            try:
                await self.queue.enqueue(entry)
                break
            except (OSError, OutcomeUnknown) as exc:
                self.storage.failed("queue", exc)
                if attempt == 1:
                    self.log.error(
                        "DELIVERY",
                        f"Entry {entry.id} not enqueued yet; retrying until the queue disk takes it",
                        kind=entry.kind,
                        error=repr(exc),
                    )
            await trio.sleep(delay)
            delay = min(delay * 2, ENQUEUE_RETRY_MAX_SECONDS)
            attempt += 1
        self.storage.recovered("queue")
        if attempt > 1:
            self.log.info("DELIVERY", f"Entry {entry.id} enqueued after {attempt} attempts")
        self._enqueued(entry)

    def _enqueued(self, entry: DeliveryEntry) -> None:
        if self.on_enqueued is not None:
            self.on_enqueued(entry)

    def _entry(
        self,
        kind: DeliveryKind,
        channel: str,
        to: str | None,
        account_id: str | None,
        agent_id: str | None,
        origin: Origin | None,
        text: str,
        idempotency_key: str | None,
    ) -> DeliveryEntry:
        """A validated, routed entry, not written yet."""
        try:
            warning = check_address(channel, to)
        except DeliveryValidationError:
            self.log.error("VALIDATION", f"Channel-address mismatch: channel={channel}, address={to}")
            raise
        if warning is not None:
            self.log.warn("VALIDATION", warning)
        assert to is not None  # check_address refuses an empty address
        now = self.clock.now()
        entry_id = self.queue.new_id(now)
        entry = DeliveryEntry(
            id=entry_id,
            kind=kind,
            channel=channel,
            to=to,
            account_id=account_id,
            agent_id=agent_id,
            requester_origin=origin,
            payload=Payload(text),
            idempotency_key=idempotency_key or entry_id,
            created_at=now,
            next_attempt_at=now,
        )
        return entry
