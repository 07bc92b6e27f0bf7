"""The session table: which sessions exist, which conversation each belongs to, which are in
memory and which were evicted to disk while idle.

One job: find or create the session a turn joins, keep the table true when a save fails or
another node takes a session over, and let idle sessions leave memory. The gateway holds one
table across generations; it decides *when* turns run, the table only *where* they go.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable

import attrs
import trio

from trio_gateway.errors import BadRequestError, InsufficientStorageError
from trio_gateway.log import EventLog
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime import session_evict
from trio_gateway.runtime.session import Session, TurnOrder
from trio_gateway.runtime.session_evict import Evicted
from trio_gateway.storage.base import SessionStorage
from trio_gateway.storage.disk import is_no_space
from trio_gateway.storage.sessions import SESSION_ID, SessionRecord, TurnRecord

# How long intake waits for the write that accepts a turn before answering 507.
DISK_WAIT_SECONDS = 10.0

Leftover = list[tuple[Session, TurnRecord]]


@attrs.define(eq=False)
class SessionTable:
    store: SessionStorage
    log: EventLog
    # Wall time for a new session's `createdAt` (read at each call: the gateway's clock starts
    # when it serves).
    now: Callable[[], dt.datetime]
    # New ids: PREFIX-GENERATION-N (cluster mode gives each process its own prefix).
    id_prefix: str = "s"
    sessions: dict[str, Session] = attrs.Factory(dict)
    started_at: float = 0.0
    _by_origin: dict[tuple[str, Origin | None], str] = attrs.Factory(dict)
    # Idle sessions out of memory (session_evict.py), and when each was last given a turn.
    _evicted: dict[str, Evicted] = attrs.Factory(dict)
    _last_active: dict[str, float] = attrs.Factory(dict)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    async def load(self) -> None:
        """Every stored session, at start: each counts as active from now."""
        self.started_at = trio.current_time()
        for record in await self.store.load_all():
            self._add(Session(record))
            self._last_active[record.id] = self.started_at

    def _add(self, session: Session) -> None:
        self.sessions[session.id] = session
        if session.record.ended_at is None:  # a session `/new` ended is no conversation's any more
            self._by_origin[_key(session.record)] = session.id

    def leftover(self) -> Leftover:
        """Every turn the table holds: at a generation's start, the ones a drain or crash left.

        Every session's line starts anew then, the leftover turns first, in this call: no turn
        of the last generation runs any more (a place it kept would stop the line for good),
        and a turn accepted before the resume's first step runs after them (`resume.py`)."""
        leftover = []
        for session in self.sessions.values():
            session.order = TurnOrder()
            for turn in session.record.turns:
                session.order.join(turn.id)
                leftover.append((session, turn))
        return leftover

    async def session_for(
        self, agent_id: str, origin: Origin | None, session_id: str | None, generation: int
    ) -> tuple[Session, bool]:
        """The session a new turn joins (read back from disk when evicted), or a new one:
        (session, created)."""
        if session_id is not None and not SESSION_ID.fullmatch(session_id):
            # Session ids name files under sessions/: never a path.
            raise BadRequestError(f"sessionId: must match {SESSION_ID.pattern}, got {session_id!r}")
        await self._restore_evicted(session_id or self._by_origin.get((agent_id, _conversation(origin))))
        if session_id is not None:
            if session_id in self.sessions:
                return self.sessions[session_id], False
        else:
            known = self._by_origin.get((agent_id, _conversation(origin)))
            if known is not None and known in self.sessions:
                return self.sessions[known], False
        record = SessionRecord(session_id or self.new_id(generation), agent_id, origin, self.now())
        session = Session(record)
        self.sessions[record.id] = session
        self._by_origin[_key(record)] = record.id
        return session, True

    async def existing(self, agent_id: str, origin: Origin | None) -> Session | None:
        """The conversation's session, read back from disk when evicted; None: it has none."""
        session_id = self.known_id(agent_id, origin)
        return None if session_id is None else await self.restore(session_id)

    def end(self, session: Session) -> None:
        """`/new`: the conversation's next turn starts a new session; this one stays stored
        (`ended_at`, saved by the caller), so a restart does not map the conversation back."""
        session.record.ended_at = self.now()
        self._drop_key(session)

    def known_id(self, agent_id: str, origin: Origin | None) -> str | None:
        """The id of the session this conversation's next turn joins, if it has one."""
        return self._by_origin.get((agent_id, _conversation(origin)))

    def new_id(self, generation: int) -> str:
        # Sessions loaded from disk keep their ids; a new process counts from 1 again, so skip
        # any id already taken rather than overwrite a stored session.
        while True:
            candidate = f"{self.id_prefix}-{max(1, generation)}-{next(self._ids)}"
            if candidate not in self.sessions and candidate not in self._evicted:
                return candidate

    async def _restore_evicted(self, session_id: str | None) -> None:
        """Read an evicted session back before a turn joins it, so its history is intact."""
        kept = self._evicted.get(session_id) if session_id is not None else None
        if session_id is None or kept is None:
            return
        record = await self.store.load(session_id)
        if session_id not in self._evicted:
            return  # restored by a concurrent submit meanwhile
        del self._evicted[session_id]
        if record is None:  # its file is gone: the next turn starts a new session
            self._by_origin = {k: v for k, v in self._by_origin.items() if v != session_id}
            return
        record.seq = max(record.seq, kept.seq)  # the disk may hold an older copy (a failed save)
        self.sessions[session_id] = Session(record)
        self._last_active[session_id] = trio.current_time()

    async def restore(self, session_id: str) -> Session | None:
        """A session held here, read back first when evicted; None when not held here."""
        await self._restore_evicted(session_id)
        return self.sessions.get(session_id)

    async def save_accepted(self, session: Session) -> None:
        """The write that makes a turn accepted, bounded: a full or stuck sessions disk
        refuses the turn with 507 (the caller forgets the turn: it was never accepted)."""
        try:
            with trio.fail_after(DISK_WAIT_SECONDS):
                await self.store.save(session.record)
        except trio.TooSlowError:
            raise InsufficientStorageError(f"the sessions disk did not answer within {DISK_WAIT_SECONDS:g}s") from None
        except OSError as exc:
            if is_no_space(exc):
                raise InsufficientStorageError(f"the sessions disk is full: {exc}") from None
            raise

    def forget_unsaved(self, session: Session, turn: TurnRecord, created: bool, inbound_id: str | None) -> None:
        """A turn whose save failed was never accepted: leave no trace of it in memory, or every
        later save of its session (and the next restart's resume) fails on it again."""
        if turn in session.record.turns:
            session.record.turns.remove(turn)
        if inbound_id is not None and inbound_id in session.record.inbound_ids:
            # Not accepted, so not heard: the platform's next delivery of it must be a turn.
            session.record.inbound_ids.remove(inbound_id)
        if created and not session.record.turns and not session.record.history and not session.busy:
            self.sessions.pop(session.id, None)
            self._drop_key(session)

    def holds(self, session: Session) -> bool:
        """False when `session` left the table meanwhile (cluster mode: another node owns it)."""
        return self.sessions.get(session.id) is session

    def touch(self, session_id: str) -> None:
        self._last_active[session_id] = trio.current_time()

    def evicted(self, session_id: str) -> bool:
        return session_id in self._evicted

    async def evict_idle(self, idle_seconds: float) -> None:
        """Runs in a generation's services nursery: every so often, idle sessions leave memory."""
        while True:
            await trio.sleep(session_evict.sweep_interval(idle_seconds))
            now = trio.current_time()
            for session in list(self.sessions.values()):
                last = self._last_active.get(session.id, self.started_at)
                if session_evict.evictable(session, last, now, idle_seconds):
                    del self.sessions[session.id]
                    self._last_active.pop(session.id, None)
                    self._evicted[session.id] = Evicted(session.record.seq)

    def adopt(self, records: list[SessionRecord]) -> Leftover:
        """Cluster mode: sessions a peer left, now held here; their turns to resume."""
        leftover: Leftover = []
        for record in records:
            known = self.sessions.get(record.id)
            if known is not None and known.record is record:
                continue  # handed over twice
            if known is not None:
                # A copy from an earlier ownership: another node held the session since (this
                # node was judged dead, or the session moved), so the database's is the truth.
                self.forget(record.id)
            self._evicted.pop(record.id, None)
            session = Session(record)
            self._add(session)
            leftover += [(session, turn) for turn in record.turns]
        return leftover

    def forget(self, session_id: str) -> Session | None:
        """Cluster mode: another node owns this session now (a write here was refused): its
        work here stops and the table keeps nothing of it; its turns are the owner's."""
        session = self.sessions.pop(session_id, None)
        if session is None:
            return None
        self._drop_key(session)
        session.lost = True  # a resume loop holding it skips its turns (`resume.py`)
        if session.inbox is not None:
            session.inbox.cancel(reason="session owned by another node")
        self.log.warn("CLUSTER", "Session owned by another node; its work here is cancelled", sessionId=session_id)
        return session

    def _drop_key(self, session: Session) -> None:
        key = _key(session.record)
        if self._by_origin.get(key) == session.id:
            del self._by_origin[key]

    def queue_depth(self, session_id: str | None) -> int:
        """Turns of a session running or waiting (the stall watchdog's and `status`'s figure)."""
        session = self.sessions.get(session_id or "")
        if session is None:
            return 0
        return session.waiting + (1 if session.current is not None else 0)


def _key(record: SessionRecord) -> tuple[str, Origin | None]:
    return record.agent, _conversation(record.origin)


def _conversation(origin: Origin | None) -> Origin | None:
    # A WeChat context token changes per message; the conversation is the rest of the origin.
    return None if origin is None else origin.conversation
