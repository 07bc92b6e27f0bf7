"""What the delivery worker needs from a channel adapter."""

from __future__ import annotations

from typing import Protocol

from trio_gateway.channels.classify import Outcome
from trio_gateway.policy.entry import DeliveryEntry


class Channel(Protocol):
    """One account of one channel, speaking its platform's real send API.

    `send` classifies every answer, network errors and timeouts included, into an `Outcome`;
    it raises only `trio.Cancelled` (a drain or the attempt's own deadline). It sends
    `entry.idempotency_key` where the platform accepts one (`deduplicates` says whether it does).
    """

    name: str
    deduplicates: bool

    async def send(self, entry: DeliveryEntry) -> Outcome: ...

    async def aclose(self) -> None: ...
