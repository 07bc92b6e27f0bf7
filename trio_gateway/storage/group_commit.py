"""Group commit: callers that arrive while a batch is on disk share the next batch's one thread
hand-off and one directory fsync (the file queue's enqueue, claim-to-send and ack) or one
transaction (the PostgreSQL queue's enqueue).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import attrs
import trio

from trio_gateway.storage.base import OutcomeUnknown

_I = TypeVar("_I")  # an item of a group commit
_R = TypeVar("_R")  # its result


@attrs.define(eq=False)
class _Ticket(Generic[_I, _R]):
    item: _I
    done: trio.Event = attrs.Factory(trio.Event)
    finished: bool = False
    result: _R | None = None
    error: BaseException | None = None

    def value(self) -> _R:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]  # set with finished, _R may be None


# How long a caller waits for its group-committed batch before it is told "outcome unknown".
# Generous: disk work is milliseconds; this only bounds a disk that stopped answering.
_DISK_WAIT_SECONDS = 10.0


@attrs.define
class GroupCommit(Generic[_I, _R]):
    """Callers that arrive while a batch is on disk join the next batch: one thread hand-off
    and one directory fsync for all of them (group commit), instead of one each.

    The first caller leads: it runs the batch, then hands leadership to the oldest waiter, so
    no caller is kept working for others indefinitely. Every wait is bounded: by the caller's
    own cancellation and by `timeout`. A caller cut from the wait before its item joined a
    batch withdraws it (nothing was written for it); one cut while its batch was on disk gets
    `OutcomeUnknown` (or its `Cancelled`) and may retry. A leader cut mid-batch (its thread is
    abandoned) tells the rest of the batch `OutcomeUnknown`, and hands the lead on.
    `run_batch` answers items in order.
    """

    run_batch: Callable[[list[_I]], Awaitable[list[_R]]]
    timeout: float = _DISK_WAIT_SECONDS
    _waiting: list[_Ticket[_I, _R]] = attrs.Factory(list)
    _leading: bool = False

    async def submit(self, item: _I) -> _R:
        ticket: _Ticket[_I, _R] = _Ticket(item)
        self._waiting.append(ticket)
        try:
            with trio.move_on_after(self.timeout) as bound:
                if self._leading:
                    await ticket.done.wait()
                if not ticket.finished:  # no batch was running, or leadership was handed to us
                    await self._lead()
        except BaseException:
            self._withdraw(ticket)
            raise
        if bound.cancelled_caught and not ticket.finished:
            self._withdraw(ticket)
            raise OutcomeUnknown(f"disk did not answer within {self.timeout:g}s")
        return ticket.value()

    def _withdraw(self, ticket: _Ticket[_I, _R]) -> None:
        if ticket not in self._waiting:
            return  # its batch is on disk or in flight: the batch settles it
        self._waiting.remove(ticket)
        if ticket.done.is_set() and not ticket.finished:
            self._hand_over()  # it had been handed the lead and leaves without using it

    def _hand_over(self) -> None:
        if self._waiting:
            self._waiting[0].done.set()  # not finished: it leads the next batch
        else:
            self._leading = False

    async def _lead(self) -> None:
        self._leading = True
        batch: list[_Ticket[_I, _R]] = []
        try:
            # Callers already runnable (the dispatcher starts several attempts in one go) join now.
            await trio.lowlevel.checkpoint()
            batch, self._waiting = self._waiting, []
            results = await self.run_batch([t.item for t in batch])
            for ticket, result in zip(batch, results, strict=True):
                ticket.result = result
        except BaseException as exc:
            # A leader cut mid-batch does not know the outcome, nor do its followers; they
            # must never re-raise the leader's own `Cancelled`.
            shared = OutcomeUnknown("the batch's disk write was abandoned") if isinstance(exc, trio.Cancelled) else exc
            for ticket in batch:
                ticket.error = shared
            raise
        finally:
            for ticket in batch:
                ticket.finished = True
                ticket.done.set()
            self._hand_over()
