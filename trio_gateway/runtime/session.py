"""One session in memory, and what its work needs from its generation.

A session owns a nursery that lives while the session has work (`serve_session`): its turns (one
at a time, in arrival order) and the subagents they spawn join it through its inbox. `Runtime`
is what a turn needs from the generation it runs in; `deliver` hands a turn's or subagent's
notice to the outbox and never raises.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

import attrs
import trio
from trio_util import AsyncValue

from trio_gateway.delivery.typing import TypingIndicators
from trio_gateway.delivery.worker import ChannelLookup
from trio_gateway.errors import DeliveryValidationError, GatewayError, SessionElsewhereError, only_gateway_error
from trio_gateway.log import EventLog
from trio_gateway.models.base import Model
from trio_gateway.policy.config import Config
from trio_gateway.policy.entry import DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.stalls import ModelStalls
from trio_gateway.runtime.usage import ModelLedger
from trio_gateway.storage.base import TURN_SESSION, SessionStorage
from trio_gateway.storage.sessions import SessionRecord, TurnRecord
from trio_gateway.tools.registry import ToolBox
from trio_gateway.work.units import WorkRegistry


class Outbox(Protocol):
    async def submit(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> object: ...


@attrs.define
class Runtime:
    """What a turn needs from its generation. Built once per generation, so a restart that
    reloads the config hands new turns the new models and rules."""

    config: Config
    models: Mapping[str, Model]
    registry: WorkRegistry
    outbox: Outbox
    store: SessionStorage
    log: EventLog
    wall: Callable[[], dt.datetime]
    # MCP servers and http_request (SPEC 14); None: only spawn_subagent.
    tools: ToolBox | None = None
    # The test endpoint's armed stalls (in memory, this generation only).
    stalls: ModelStalls = attrs.Factory(ModelStalls)
    # Tokens, call outcomes and cool-downs (SPEC 16); the gateway's own, across generations.
    ledger: ModelLedger = attrs.Factory(ModelLedger)

    # The typing indicator shown while a turn runs (SPEC 15); None: none is shown.
    typing: TypingIndicators | None = None

    def typing_in(self, origin: Origin | None) -> AbstractAsyncContextManager[None]:
        return self.typing.during(origin) if self.typing is not None else contextlib.nullcontext()

    def show_typing_through(self, channels: ChannelLookup | None, gateway_state: AsyncValue[Any]) -> None:
        """Turns show typing through the generation's channel adapters (none without them),
        until the gateway's state reads "draining"."""
        self.typing = TypingIndicators.through(channels, self.log, gateway_state)

    def model(self, name: str, session_id: str) -> Model:
        """The model a session's next call goes to (stalling when the test endpoint armed it)."""
        return self.stalls.model_for(session_id, self.models[name])

    @property
    def cleanup_timeout(self) -> float:
        return self.config.gateway.drain.cleanup_timeout_seconds


@attrs.frozen
class TurnOutcome:
    """How a turn ended, once its reply or failure notice is durably enqueued."""

    ok: bool
    text: str


# Outcomes kept per session for `session start --wait`: a waiter arrives within seconds.
MAX_OUTCOMES = 32


@attrs.define(eq=False)
class Subagent:
    id: str
    agent: str
    depth: int
    task: str
    state: str = "running"


@attrs.define(eq=False)
class SessionInbox:
    """How work joins a busy session's task: its later turns and its subagents, started in the
    nursery that task owns. The nursery itself never leaves that task.

    The task closes the inbox in the same step (no checkpoint between) as it finds nothing
    left running, before it leaves its `async with`; so while the inbox is open the nursery is
    open, and a turn handed in is either started there or refused (`False`: the caller starts
    a new session task) — never lost to a nursery that is closing."""

    _nursery: trio.Nursery
    closed: bool = False
    _running: int = 0
    _idle: trio.Event = attrs.Factory(trio.Event)

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> bool:
        """Start `fn(*args)` in the session's nursery; False once the task takes no more work."""
        if self.closed:
            return False
        self._running += 1
        self._nursery.start_soon(self._run, fn, *args)
        return True

    @property
    def cancelled(self) -> bool:
        """The session's own scope was cancelled (an abort). A drain cancels the work scope
        around every session instead, which this does not see (nor did it before the inbox)."""
        return self._nursery.cancel_scope.cancel_called

    def cancel(self, reason: str) -> None:
        self._nursery.cancel_scope.cancel(reason=reason)

    async def _run(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        finally:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def close_when_idle(self) -> None:
        """Until nothing runs here, then closed: the last check and the close are one step."""
        while self._running:
            self._idle = trio.Event()
            await self._idle.wait()
        self.closed = True


@attrs.define(eq=False)
class TurnOrder:
    """A session's turns run one at a time, in the order they joined it.

    A turn takes its place by a plain call (`join`) when it is queued, never in its own task:
    trio may run tasks started in one step in either order (it reverses a batch half the time,
    to shake out exactly such assumptions), so a lock taken in each turn's task would let two
    turns queued together run swapped. A place can also be taken before its turn may start
    (`resume.py`: turns a restart or a take-over left, each saved first), which keeps a turn
    accepted meanwhile behind them. Whoever joins a turn makes it `leave`, run or not."""

    _queue: list[str] = attrs.Factory(list)  # turn ids: the head runs, the rest wait
    _moved: trio.Event = attrs.Factory(trio.Event)

    def join(self, turn_id: str) -> None:
        """Take the turn's place at the end; a turn already in line keeps its place."""
        if turn_id not in self._queue:
            self._queue.append(turn_id)

    async def wait(self, turn_id: str) -> None:
        """Until every turn that joined before this one has left: a checkpoint even when
        none did (as acquiring a free lock is), so a cancelled task stops here."""
        self.join(turn_id)
        await trio.lowlevel.checkpoint()
        while self._queue[0] != turn_id:
            await self._moved.wait()

    def leave(self, turn_id: str) -> None:
        if turn_id in self._queue:
            self._queue.remove(turn_id)
            self._moved.set()
            self._moved = trio.Event()


@attrs.define(eq=False)
class Session:
    record: SessionRecord
    # While the session's task runs (`run_session`): where its later work joins it.
    inbox: SessionInbox | None = None
    order: TurnOrder = attrs.Factory(TurnOrder)
    waiting: int = 0
    current: TurnRecord | None = None
    subagents: dict[str, Subagent] = attrs.Factory(dict)
    # Turns an operator abort cut off: their requesters are told, and they are not resumed.
    # Kept per turn, not as a session flag, so a turn submitted after the abort is unaffected.
    aborted: set[str] = attrs.Factory(set)
    outcomes: dict[str, TurnOutcome] = attrs.Factory(dict)
    # Set (and replaced) each time a turn ends: what a waiter for an outcome sleeps on.
    ended: trio.Event = attrs.Factory(trio.Event)
    # Cluster mode: another node owns it now (`SessionTable.forget`); nothing here runs its turns.
    lost: bool = False

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def busy(self) -> bool:
        return self.inbox is not None

    def next_id(self, prefix: str) -> str:
        # Counted in the record, which is saved with every accepted turn: a turn id is never
        # reused after a restart, and it is the reply's idempotency key (channels dedupe by it).
        self.record.seq += 1
        return f"{prefix}-{self.id}-{self.record.seq}"

    def finish(self, turn_id: str, *, ok: bool, text: str) -> None:
        self.outcomes[turn_id] = TurnOutcome(ok, text)
        while len(self.outcomes) > MAX_OUTCOMES:
            del self.outcomes[next(iter(self.outcomes))]
        self.ended.set()
        self.ended = trio.Event()

    def abort(self) -> bool:
        """Cancel all of this session's work (operator's `session abort`)."""
        if self.inbox is None:
            return False
        self.aborted.update(t.id for t in self.record.turns)
        self.inbox.cancel("session aborted by the operator")
        return True


async def serve_session(session: Session, first: Callable[[], Awaitable[None]], *, task_status: Any) -> None:
    """Own the session's nursery: run `first`, then whatever joins through the inbox, until
    nothing is left; the inbox closes before the nursery does."""
    inbox: SessionInbox | None = None
    try:
        async with trio.open_nursery() as nursery:
            inbox = session.inbox = SessionInbox(nursery)
            task_status.started()
            try:
                await first()
                await inbox.close_when_idle()
            finally:
                inbox.closed = True  # cancelled or failed: refuse work while the nursery unwinds
    finally:
        # A newer session task may already own the session (started once this one closed):
        # only clear what is still ours.
        if inbox is not None and session.inbox is inbox:
            session.inbox = None


def gateway_error(exc: BaseException) -> GatewayError | None:
    """The gateway error behind `exc`, also when a nursery inside a model client wrapped it
    in an exception group (several: the first answers, naming the others in its notes); None
    when it is anything else (a bug)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return only_gateway_error(exc)
    return None


DeliverOutcome = Literal["enqueued", "no_route", "failed", "lost"]


async def deliver(
    rt: Runtime,
    *,
    session_id: str,
    kind: DeliveryKind,
    origin: Origin | None,
    agent_id: str,
    text: str,
    key: str | None,
) -> DeliverOutcome:
    """Hand a notice of `session_id`'s work to the outbox. Never raises (but `Cancelled`): a
    notice that cannot be enqueued is logged loudly with its text, and the caller decides what
    to keep. (The queue's outbox itself retries a full disk until cancelled; `failed` is what
    any other error or outbox gives.) `lost` (cluster mode): another node owns the session now
    and the queue refused the notice; the session is forgotten here, its turns are the owner's."""
    fence = TURN_SESSION.set(session_id)
    try:
        await rt.outbox.submit(kind=kind, origin=origin, agent_id=agent_id, text=text, idempotency_key=key)
    except SessionElsewhereError as exc:
        # Not retried: the owner ends this turn (one reply or one notice, SPEC 12), not us.
        rt.log.warn("DELIVERY", "Notice not enqueued: another node owns the session", kind=kind, error=str(exc))
        return "lost"
    except DeliveryValidationError as exc:
        # The origin itself is unusable (validated at intake, so this means a stale session or
        # a removed agent): there is nowhere correct to send it.
        rt.log.error("DELIVERY", "Notice not enqueued: no valid route", kind=kind, error=str(exc), text=text[:200])
        return "no_route"
    except Exception as exc:  # disk full, I/O error: say so, keep going
        rt.log.error("DELIVERY", "Notice not enqueued", kind=kind, error=repr(exc), text=text[:200])
        return "failed"
    finally:
        TURN_SESSION.reset(fence)
    return "enqueued"
