"""A delivery entry (SPEC 7): the record one file in `delivery-queue/` holds. Pure data."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

import attrs

from trio_gateway.errors import BadRequestError
from trio_gateway.policy import codec
from trio_gateway.policy.origin import Origin

DeliveryKind = Literal["reply", "subagent_completion", "subagent_failure", "cron_result", "manual"]


@attrs.frozen
class Payload:
    text: str


@attrs.frozen
class DeliveryEntry:
    id: str
    kind: DeliveryKind
    channel: str
    to: str
    account_id: str | None
    agent_id: str | None
    requester_origin: Origin | None
    payload: Payload
    idempotency_key: str
    created_at: dt.datetime
    next_attempt_at: dt.datetime
    version: int = 1
    attempts: int = 0
    last_error: str | None = None
    send_started_at: dt.datetime | None = None
    failed_reason: str | None = None
    failed_at: dt.datetime | None = None
    # When an operator last moved the entry back from failed/ (`delivery retry`): the retry
    # budget (maxTotalRetrySeconds) counts from here instead of `createdAt`.
    retried_at: dt.datetime | None = None

    def retried(self, last_error: str, next_at: dt.datetime) -> DeliveryEntry:
        """A failed attempt that will be retried: counted, due again at `next_at`."""
        return attrs.evolve(
            self, attempts=self.attempts + 1, last_error=last_error, next_attempt_at=next_at, send_started_at=None
        )

    def held(self, reason: str, next_at: dt.datetime) -> DeliveryEntry:
        """Back to pending untouched but for the reason and the time: not a counted attempt."""
        return attrs.evolve(self, last_error=reason, next_attempt_at=next_at, send_started_at=None)

    def revived(self, now: dt.datetime) -> DeliveryEntry:
        """`delivery retry`: a dead letter due again now, its attempts and budget reset."""
        return attrs.evolve(
            self,
            attempts=0,
            next_attempt_at=now,
            retried_at=now,
            failed_reason=None,
            failed_at=None,
            send_started_at=None,
        )

    def dead(self, reason: str, now: dt.datetime) -> DeliveryEntry:
        """This entry as a dead letter: the reason kept, no send in flight any more."""
        return attrs.evolve(self, failed_reason=reason, failed_at=now, send_started_at=None)

    def rerouted(self, *, channel: str, to: str, account_id: str | None, now: dt.datetime, why: str) -> DeliveryEntry:
        """`delivery repair`: this entry pointed at a new address, a fresh start (every backend
        stores the same rerouted entry)."""
        return attrs.evolve(
            self,
            channel=channel,
            to=to,
            account_id=account_id,
            attempts=0,
            next_attempt_at=now,
            retried_at=now,
            send_started_at=None,
            last_error=why,
        )


def entry_to_json(entry: DeliveryEntry) -> dict[str, Any]:
    data: dict[str, Any] = codec.unstructure(entry)
    return data


def entry_from_json(data: object) -> DeliveryEntry:
    """Raises `cattrs` / `TypeError` / `ValueError` on a malformed entry; the queue turns that
    into a quarantine, never a crash."""
    return codec.structure(data, DeliveryEntry)


# What an entry id may be wherever one comes from outside (`delivery retry ID`, the retry
# route): the queue's ids (26 characters of Crockford base32) and any safe name like them. An id
# is part of a file name, so `../../x`, a NUL or 5,000 characters is refused here, naming the
# problem, before any file is touched.
ENTRY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def check_id(entry_id: str) -> str:
    """`entry_id` when it can be a delivery entry's id; else `BadRequestError`."""
    if ENTRY_ID.fullmatch(entry_id) is None:
        shown = entry_id[:40].encode("ascii", "backslashreplace").decode()
        more = f"... ({len(entry_id)} characters)" if len(entry_id) > 40 else ""
        raise BadRequestError(f"id: {shown!r}{more} is not a delivery id (letters, digits, _ and -, at most 128)")
    return entry_id
