"""Cluster mode's intake: one conversation, one session, one history on any node (SPEC 12).

A turn accepted here joins the conversation's session wherever it lives:

- held here (in memory, or evicted while idle): accepted here, as on one node;
- owned by a live peer: written to the database as that session's handed-off turn (the caller
  gets its session id and turn id as usual), and the owner, woken by a notification (its poll
  is the backstop), moves it into its record and runs it in order with the session's others;
- owned by nobody alive (its node died or left): taken over here with its whole history and
  the turns handed to it, which resume, then the new turn joins them;
- no session anywhere: a new one, reserved for the conversation cluster-wide first, so two
  nodes hearing one conversation at once never open two.

The session can move between the look and the write (its owner dies, or another node was
quicker): the write says so and the turn is placed again, a few times at most.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from itertools import groupby
from typing import Protocol

import attrs
import trio

from trio_gateway.errors import SessionElsewhereError
from trio_gateway.log import EventLog
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.session import Session
from trio_gateway.runtime.sessions import SessionTable
from trio_gateway.storage.base import HandedOff, Located, SessionDirectory, SessionStorage
from trio_gateway.storage.sessions import SessionRecord, TurnKind, TurnRecord

# A session that keeps moving while a turn is placed: refuse the turn (the caller retries).
_PLACEMENTS = 3
# A `wait` for a turn another node runs reads the database this often.
OUTCOME_POLL_SECONDS = 0.05

Accepted = tuple[str, str] | None


@attrs.frozen
class TurnAsked:
    """A turn as intake received it, before any node accepted it."""

    agent_id: str
    origin: Origin | None
    prompt: str
    kind: TurnKind
    session_id: str | None
    inbound_id: str | None


# The gateway's own accept of a turn into a session held here: (session id, turn id), None
# when the platform message was heard already. Raises SessionElsewhereError when the write
# found the session owned by another node.
AcceptHere = Callable[[TurnAsked], Awaitable[Accepted]]


class IntakeHost(Protocol):
    """What cluster intake needs from the gateway."""

    @property
    def generation_number(self) -> int: ...  # new session ids carry it

    async def adopt_sessions(self, records: list[SessionRecord]) -> None: ...

    async def take_handoffs(self, items: list[HandedOff]) -> None: ...


@attrs.define(eq=False)
class ClusterIntake:
    directory: SessionDirectory
    table: SessionTable
    log: EventLog
    host: IntakeHost

    @classmethod
    def over(cls, store: SessionStorage, table: SessionTable, log: EventLog, host: IntakeHost) -> ClusterIntake | None:
        """Cluster mode's intake when `store` is a session directory (PostgreSQL), else None."""
        return cls(store, table, log, host) if isinstance(store, SessionDirectory) else None

    async def accept(self, asked: TurnAsked, here: AcceptHere) -> Accepted:
        for _ in range(_PLACEMENTS):
            where = await self._place(asked.agent_id, asked.origin, asked.session_id)
            if isinstance(where, Located):
                turn_id = f"turn-{where.session_id}-{secrets.token_hex(5)}"  # the owner's counter is not ours
                turn = TurnRecord(turn_id, asked.prompt, asked.origin, asked.kind, accepted_at=self.table.now())
                handed = await self.directory.hand_off(where.session_id, asked.agent_id, turn, asked.inbound_id)
                if handed == "written":
                    self.log.info("CLUSTER", "Turn handed to the session's owner", sessionId=where.session_id)
                    return where.session_id, turn.id
                if handed == "heard":
                    return None
                continue  # its owner left meanwhile: place it again
            # Turns handed to this session before this one was sent run before it (SPEC 15),
            # even when this node has not been woken for them yet.
            earlier = await self.directory.handed_off(where)
            if earlier:
                await self.host.take_handoffs(earlier)
            try:
                return await here(attrs.evolve(asked, session_id=where))
            except SessionElsewhereError:
                continue  # another node took the session meanwhile (forgotten here): again
        raise SessionElsewhereError("the conversation's session kept moving between nodes; try again")

    async def _place(
        self,
        agent_id: str,
        origin: Origin | None,
        session_id: str | None,
    ) -> str | Located:
        """The id of the session held here that the turn joins, or where a peer holds it."""
        local = session_id or self.table.known_id(agent_id, origin)
        if local is not None and (local in self.table.sessions or self.table.evicted(local)):
            return local
        candidate = session_id or self.table.new_id(self.host.generation_number)
        conversation = None if origin is None else origin.conversation
        located = await self.directory.locate(agent_id, conversation, session_id, candidate)
        if located.owner is not None:
            return located
        if located.record is not None:
            try:
                # Its pending turns are queued first: the new one after them.
                await self.host.adopt_sessions([located.record])
            finally:
                self.directory.arrived(located.session_id)
        return located.session_id

    async def take(self, items: list[HandedOff], start: Callable[[Session, TurnRecord], Awaitable[None]]) -> None:
        """Turns peers handed to sessions owned here: into each record (its write deletes
        their rows), then run, in the order they were accepted."""
        for session_id, group in groupby(items, key=lambda item: item.session_id):
            handed = list(group)
            session = await self.table.restore(session_id)
            if session is None:
                continue  # not held here after all: the owner (or an adopter) takes them
            for item in handed:
                self.directory.absorb(item)
            turns = [item.turn for item in handed if session.record.join(item.turn, item.inbound_id)]
            try:
                await self.table.save_accepted(session)
            except Exception as exc:
                # These turns were accepted (another node answered 202): never dropped here. The
                # write may even have committed (a connection lost at the commit). They stay in
                # the record and run; the session's next write records them and deletes their
                # rows, and until then the rows are there for an adopter if this node dies.
                self.log.error(
                    "CLUSTER",
                    "Handed-off turns taken without their write; running them",
                    sessionId=session_id,
                    error=str(exc),
                )
            if not self.table.holds(session):
                continue  # the write was refused: another node owns the session now
            self.table.touch(session_id)
            for turn in turns:
                await start(session, turn)

    async def outcome(self, session_id: str, turn_id: str) -> tuple[bool, str] | None:
        """How a turn held by another node ended, for `wait`: read until it is known (the
        caller bounds the wait). None: no such turn in the cluster."""
        while True:
            found = await self.directory.outcome(session_id, turn_id)
            if found == "unknown":
                return None
            if found != "pending":
                return found
            await trio.sleep(OUTCOME_POLL_SECONDS)
