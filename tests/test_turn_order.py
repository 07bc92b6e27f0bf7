"""A session's turns run one at a time, in the order they were queued (`TurnOrder`, SPEC 15):
the order of `join` calls, never the order in which trio first runs the turns' tasks."""

from __future__ import annotations

import datetime as dt
from typing import cast

import trio
import trio.testing

from trio_gateway.log import EventLog
from trio_gateway.runtime.session import Session, TurnOrder
from trio_gateway.runtime.sessions import SessionTable
from trio_gateway.storage.base import SessionStorage
from trio_gateway.storage.sessions import SessionRecord, TurnRecord


async def _take_turn(order: TurnOrder, turn_id: str, ran: list[str]) -> None:
    try:
        await order.wait(turn_id)
        ran.append(turn_id)
        await trio.sleep(1)  # a turn's work: the next one must wait for it
    finally:
        order.leave(turn_id)


async def test_turns_run_in_the_order_they_joined_not_the_order_their_tasks_start(
    autojump_clock: trio.abc.Clock,
) -> None:
    order, ran = TurnOrder(), []
    for turn_id in ("one", "two", "three"):
        order.join(turn_id)
    with trio.fail_after(60):  # virtual seconds: a line that stops fails here, by name
        async with trio.open_nursery() as nursery:
            for turn_id in ("three", "two", "one"):  # their tasks run backwards
                nursery.start_soon(_take_turn, order, turn_id, ran)
                await trio.testing.wait_all_tasks_blocked()
    assert ran == ["one", "two", "three"]


async def test_a_turn_cancelled_while_it_waits_gives_its_place_up(autojump_clock: trio.abc.Clock) -> None:
    order, ran = TurnOrder(), []
    for turn_id in ("one", "two", "three"):
        order.join(turn_id)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_take_turn, order, "one", ran)
            with trio.CancelScope() as two:
                two.cancel(reason="stopped while it waited")
                await _take_turn(order, "two", ran)
            nursery.start_soon(_take_turn, order, "three", ran)
    assert ran == ["one", "three"]


async def test_a_generation_starts_every_sessions_line_anew_with_its_leftover_first(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A place left by a turn whose task never started (the drain closed its nursery first),
    its turn gone from the record since, must not stop the session's turns for good; and a
    turn accepted before the resume's first step runs after the leftover: the next
    generation's `leftover()` starts each line anew with its leftover turns in it."""
    table = SessionTable(cast(SessionStorage, None), EventLog([]), lambda: dt.datetime.now(dt.UTC))
    record = SessionRecord("s-1-1", "main", None, dt.datetime.now(dt.UTC))
    record.turns.append(TurnRecord("turn-s-1-1-2", "left by the drain", None))
    session = Session(record)
    table.sessions[session.id] = session
    session.order.join("turn-s-1-1-1")  # its task never ran; a `/stop` took it out of the record
    assert [turn.id for _, turn in table.leftover()] == ["turn-s-1-1-2"]
    ran: list[str] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            session.order.join("turn-s-1-1-3")  # accepted before the resume started
            nursery.start_soon(_take_turn, session.order, "turn-s-1-1-3", ran)
            await trio.testing.wait_all_tasks_blocked()
            await _take_turn(session.order, "turn-s-1-1-2", ran)
    assert ran == ["turn-s-1-1-2", "turn-s-1-1-3"]
