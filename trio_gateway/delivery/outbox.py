"""The `Outbox` (SPEC 7): what agents, cron and the edges call to send something. It routes
(from the requester's origin), validates the address, and writes the entry durably; the
worker is told at once, so a new entry is sent now rather than at the next rescan.

A notice longer than its platform takes (SPEC 15) becomes one entry per chunk, here, where the
reply becomes entries: cut by the platform's `TextForm` (its limit as it counts it, measured on
the text as sent) or the account's `textChunkLimit`, enqueued in order, keys `<key>:1`, `<key>:2`…
The worker sends one conversation's entries one at a time, so the chunks arrive in order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NotRequired, TypedDict, Unpack

import attrs
import trio

from trio_gateway.channels.registry import check_address, kind_of
from trio_gateway.errors import ClusterDatabaseError, DeliveryValidationError, InsufficientStorageError
from trio_gateway.log import EventLog
from trio_gateway.policy import routing
from trio_gateway.policy.config import AgentConfig, Config
from trio_gateway.policy.entry import DeliveryEntry, DeliveryKind, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import DeliveryStore, OutcomeUnknown
from trio_gateway.storage.disk import StorageHealth, is_no_space
from trio_gateway.work.clock import WallClock

# A notice of accepted work that the queue disk refused is retried from this delay, doubling
# up to the maximum: a full disk is freed by a person, in minutes, not milliseconds.
ENQUEUE_RETRY_FIRST_SECONDS = 0.5
ENQUEUE_RETRY_MAX_SECONDS = 30.0


@attrs.frozen
class _Address:
    """Where a notice goes and on whose behalf: what each of its entries shares."""

    kind: DeliveryKind
    channel: str
    to: str | None
    account_id: str | None
    agent_id: str | None
    origin: Origin | None


class Notice(TypedDict):
    """What `submit` takes (its keywords), as `submit_all` names them."""

    kind: DeliveryKind
    origin: Origin | None
    agent_id: str
    text: str
    idempotency_key: NotRequired[str | None]


def text_chunk_limits(config: Config) -> dict[tuple[str, str | None], int]:
    """Every account's `textChunkLimit` that is set, by (channel, account)."""
    return {
        (channel, account_id): account.text_chunk_limit
        for channel, section in config.channels.items()
        for account_id, account in section.accounts.items()
        if account.text_chunk_limit is not None
    }


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
    # `textChunkLimit` by (channel, account): an account's own chunk size, below its platform's.
    chunk_limits: Mapping[tuple[str, str | None], int] = attrs.Factory(dict)

    async def submit(self, **notice: Unpack[Notice]) -> DeliveryEntry:
        """Route, validate and enqueue a notice; the first of its entries (a long one is several)."""
        return (await self.submit_all(**notice))[0]

    async def submit_all(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> list[DeliveryEntry]:
        """Route, validate and enqueue a notice, one entry per chunk, in order."""
        agent = self.agents.get(agent_id)
        if agent is None:
            raise DeliveryValidationError(f"no agent named {agent_id!r}")
        route = routing.resolve(origin, agent)
        if route.is_fallback:
            self.log.warn(
                "DELIVERY",
                f"No requester origin channel; delivering {kind} to agent {agent_id}'s first channel {route.channel}",
            )
        to = _Address(kind, route.channel, route.to, route.account_id, agent_id, origin)
        entries = self._entries(to, text, idempotency_key)
        for entry in entries:  # one after another: each chunk is on disk before the next
            await self._enqueue_until_kept(entry)
        return entries

    def _entries(self, to: _Address, text: str, idempotency_key: str | None) -> list[DeliveryEntry]:
        """One entry per chunk, in order, keyed `<key>:<n>`; a text that fits keeps its key."""
        pieces = self.chunks(to.channel, to.account_id, text)
        first = self._entry(to, pieces[0])
        key = idempotency_key or first.id
        if len(pieces) == 1:
            return [attrs.evolve(first, idempotency_key=key)]
        entries = [attrs.evolve(first, idempotency_key=f"{key}:1")]
        for n, piece in enumerate(pieces[1:], 2):
            entries.append(attrs.evolve(self._entry(to, piece), idempotency_key=f"{key}:{n}"))
        return entries

    def chunks(self, channel: str, account_id: str | None, text: str) -> list[str]:
        """`text` as the platform takes it: one piece, or several that each fit as sent."""
        kind = kind_of(channel)
        form = kind.text if kind is not None else None
        if form is None:
            return [text]
        return form.chunks(text, self.chunk_limits.get((channel, account_id)))

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        """`delivery create` and `POST /v1/deliveries`: an explicit address, no routing. A text
        longer than the platform takes is several entries (SPEC 15); the first is returned."""
        if account_id is None and agent_id is not None and agent_id in self.agents:
            account_id = self.agents[agent_id].account_id
        entries = self._entries(_Address("manual", channel, to, account_id, agent_id, None), text, None)
        for n, entry in enumerate(entries):
            try:
                await self.queue.enqueue(entry)
            except OSError as exc:
                if not is_no_space(exc):
                    raise
                why = f"the delivery queue's disk is full: {exc.strerror}{_partly(entries, n)}"
                raise InsufficientStorageError(why) from None
            except OutcomeUnknown as exc:
                why = f"the delivery queue's disk is not answering: {exc}{_partly(entries, n)}"
                raise InsufficientStorageError(why) from None
            self._enqueued(entry)
        return entries[0]

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
            except (OSError, OutcomeUnknown, ClusterDatabaseError) as exc:
                # (Cluster mode: the database is the queue; away for a restart, it is retried
                # like a full disk, or the turn would sit with its reply until a restart.)
                self.storage.failed("queue", exc)
                if attempt == 1:
                    self.log.error(
                        "DELIVERY",
                        f"Entry {entry.id} not enqueued yet; retrying until the queue takes it",
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

    def _entry(self, address: _Address, text: str) -> DeliveryEntry:
        """A validated, routed entry, not written yet (keyed by its id)."""
        channel, to = address.channel, address.to
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
        return DeliveryEntry(
            id=entry_id,
            kind=address.kind,
            channel=channel,
            to=to,
            account_id=address.account_id,
            agent_id=address.agent_id,
            requester_origin=address.origin,
            payload=Payload(text),
            idempotency_key=entry_id,
            created_at=now,
            next_attempt_at=now,
        )


def _partly(entries: list[DeliveryEntry], queued: int) -> str:
    """What a refusal must add when some chunks were queued already: they will be sent, so a
    client that retries the whole text would send them twice."""
    if queued == 0:
        return ""
    return (
        f" ({queued} of {len(entries)} chunks were queued and will be sent, the first {entries[0].id}; "
        "the rest was not)"
    )
