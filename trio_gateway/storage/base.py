"""The storage interface: what the runtime needs from where its state lives.

Two backends implement it: the files under the home (`queue.DeliveryQueue`,
`sessions.SessionStore`: the default, one gateway per home) and PostgreSQL
(`cluster.pg_queue`, `cluster.pg_sessions`: cluster mode, SPEC 12). The gateway picks one at
construction (`assemble.py`); nothing above this line knows which.
"""

from __future__ import annotations

import datetime as dt
from contextvars import ContextVar
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import attrs

from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.sessions import SessionRecord, TurnRecord

# The cron entry (id, everySeconds) whose run is being submitted (set by runtime/cron.py around
# its submit). In cluster mode the session store claims the entry's current slot in the same
# transaction as the turn it writes, so a slot fires once in the whole cluster
# (cluster/pg_sessions.py); the file store ignores it. Part of the session store's contract, so
# it lives here, below both the cron that sets it and the store that reads it.
CRON_SLOT: ContextVar[tuple[str, float] | None] = ContextVar("CRON_SLOT", default=None)

# The session whose turn (or subagent) a notice being enqueued belongs to (set by
# `runtime.session.deliver` around its submit). In cluster mode the queue writes the entry only
# in a transaction that finds this node still holding the session's lease at the epoch it knows
# (`cluster/pg_queue.py`), so a node that lost the session (back from a stall) never answers
# for it; the file queue ignores it (one node).
TURN_SESSION: ContextVar[str | None] = ContextVar("TURN_SESSION", default=None)


@attrs.frozen
class Claimed:
    """An entry this process has claimed: in the file queue, with the inflight file that
    holds it; in the PostgreSQL queue (`cluster.pg_queue`), with the claim's fencing token."""

    entry: DeliveryEntry
    path: Path | None = None
    # The `sendStartedAt` found on disk when this send was marked: an earlier send that may
    # have reached the channel (a crash or a drain cut it), so this one may be a duplicate.
    resend_of: dt.datetime | None = None
    # PostgreSQL only: the claim counter at this claim. A settle carrying an older one (the
    # claim was taken over meanwhile) changes nothing.
    fence: int = 0

    @property
    def file(self) -> Path:
        assert self.path is not None, "a claim of the file queue has its file"
        return self.path


@attrs.frozen
class NotDue:
    """Claim refused: the entry on disk is not due yet (another worker rescheduled it)."""

    next_attempt_at: dt.datetime
    # What the worker needs to schedule it, learnt by the claim (a lazily listed entry had none).
    channel: str | None = attrs.field(default=None, eq=False)
    account_id: str | None = attrs.field(default=None, eq=False)


class OutcomeUnknown(Exception):
    """The caller was cut from a disk write before it learnt how the write ended: it may be on
    disk or not. Retrying with the same entry id is safe (enqueue is idempotent by id)."""


class SessionStorage(Protocol):
    """Sessions with their history and accepted-but-unfinished turns (SPEC 6). In cluster mode
    a save is refused (and changes nothing) once another node owns the session."""

    async def save(self, record: SessionRecord) -> None: ...

    async def load(self, session_id: str) -> SessionRecord | None: ...

    async def load_all(self) -> list[SessionRecord]: ...


@attrs.frozen
class Located:
    """Where a conversation's session lives, cluster-wide (`SessionDirectory.locate`)."""

    session_id: str
    # A live peer owns it: the turn is handed to that node (`hand_off`).
    owner: str | None = None
    # Taken over here just now (its owner died or left), with its whole history and the turns
    # handed to it: adopt it. None (and no owner): a session this node creates under that id.
    record: SessionRecord | None = None


@attrs.frozen
class HandedOff:
    """A turn a peer accepted for a session this node owns: one row until the owner's next
    write of the session, which moves it into the record (`SessionDirectory.absorb`)."""

    seq: int
    session_id: str
    agent: str
    turn: TurnRecord
    inbound_id: str | None = None


HandOff = Literal["written", "heard", "free"]
# How a turn ended, for a `wait` on any node: (ok, text), or still "pending", or "unknown".
RemoteOutcome = tuple[bool, str] | Literal["pending", "unknown"]


@runtime_checkable
class SessionDirectory(Protocol):
    """Cluster mode (SPEC 12): one conversation, one session, cluster-wide. The session store
    in PostgreSQL is also this; the file store is not (one gateway per home)."""

    async def locate(
        self, agent_id: str, conversation: Origin | None, session_id: str | None, candidate: str
    ) -> Located:
        """The session a turn of this conversation joins (`session_id`: the one asked for);
        with none anywhere, `candidate` is reserved for it."""
        ...

    def arrived(self, session_id: str) -> None:
        """The record `locate` returned to take over is in the gateway's table now (or never
        will be): a take-over of that session waiting meanwhile goes on."""
        ...

    async def hand_off(self, session_id: str, agent_id: str, turn: TurnRecord, inbound_id: str | None) -> HandOff:
        """Write `turn` as an accepted turn of a session a live peer owns ("written"); "heard":
        that platform message is a turn already; "free": the owner left meanwhile (locate again)."""
        ...

    async def handed_off(self, session_id: str | None = None) -> list[HandedOff]:
        """Turns handed to sessions this node owns (or to that one), not yet taken, oldest first."""
        ...

    def absorb(self, item: HandedOff) -> None:
        """`item` is in its session's record now: the session's next write deletes its row."""
        ...

    def note_outcome(self, session_id: str, turn_id: str, ok: bool, text: str) -> None:
        """How a turn ended, written with the session's next write (for `outcome`)."""
        ...

    async def outcome(self, session_id: str, turn_id: str) -> RemoteOutcome: ...


class DeliveryStore(Protocol):
    """The durable delivery queue (SPEC 7). Every state change is durable when its call
    returns. A settle (`ack`, `retry_later`, `hold`, `release`, `dead_letter`, `reroute`) of a
    claim this process no longer holds changes nothing."""

    def new_id(self, when: dt.datetime) -> str: ...

    async def enqueue(self, entry: DeliveryEntry) -> None: ...

    async def list_pending(self) -> list[DeliveryEntry]: ...

    async def list_inflight(self) -> list[DeliveryEntry]: ...

    async def list_failed(self) -> list[DeliveryEntry]: ...

    async def failed_page(self, after: str | None, limit: int) -> tuple[list[DeliveryEntry], int]:
        """Up to `limit` dead letters with ids after `after`, in id order, and how many dead
        letters there are in all: only the page is read (`GET /v1/deliveries`)."""

    async def due(self, now: dt.datetime) -> list[DeliveryEntry]: ...

    async def claim(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None: ...

    async def claim_to_send(self, entry_id: str, now: dt.datetime) -> Claimed | NotDue | None: ...

    def holds(self, entry_id: str) -> bool: ...

    def let_go(self, entry_id: str) -> None: ...

    async def ack(self, claimed: Claimed) -> None: ...

    async def retry_later(self, claimed: Claimed, last_error: str, next_at: dt.datetime) -> DeliveryEntry: ...

    async def hold(self, claimed: Claimed, reason: str, next_at: dt.datetime) -> DeliveryEntry: ...

    async def release(self, claimed: Claimed) -> None: ...

    async def dead_letter(self, claimed: Claimed, reason: str, now: dt.datetime) -> DeliveryEntry: ...

    async def reroute(
        self, claimed: Claimed, *, channel: str, to: str, account_id: str | None, now: dt.datetime, why: str
    ) -> DeliveryEntry: ...

    async def retry_dead(self, entry_id: str, now: dt.datetime) -> DeliveryEntry: ...

    async def recover(self) -> list[str]: ...

    async def pending_ids(self) -> list[str]: ...

    async def peek(self, entry_ids: list[str]) -> dict[str, DeliveryEntry]: ...
