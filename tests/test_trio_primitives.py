"""Trio's own primitives where the code once had its own (issue 11): a unit's abort is
`CancelScope.cancel(reason=)`, and an exception group is never unwrapped by taking its first
member and dropping the rest. And a seam: a model is handed a progress callback, not a unit."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import trio

import trio_gateway
from trio_gateway.channels.inbound import ListenError, socket_error
from trio_gateway.errors import (
    BadRequestError,
    GatewayError,
    NotFoundError,
    WorkAbortedError,
    chosen,
    leaves,
    only_gateway_error,
)
from trio_gateway.http.app import _until_disconnected
from trio_gateway.log import EventLog
from trio_gateway.work.units import WorkRegistry


async def test_an_abort_is_trios_own_cancel_reason_and_the_first_one_wins(autojump_clock: trio.abc.Clock) -> None:
    registry = WorkRegistry(EventLog([]))
    seen: list[str | None] = []

    async def cut_off() -> None:
        with registry.track("model_call", "s-1") as unit:
            unit.abort("no progress for 120s")
            unit.abort("a later reason")  # trio keeps the first
            try:
                await trio.sleep(1)
            except trio.Cancelled as exc:
                seen.append(exc.reason)
                raise

    with pytest.raises(WorkAbortedError, match=r"^model_call aborted: no progress for 120s$"):
        await cut_off()
    assert seen == ["no progress for 120s"]  # the work itself can read why it was cut off
    assert registry.aborts_by_kind == {"model_call": 1}


async def test_a_drain_passes_through_an_aborted_unit_as_cancelled(autojump_clock: trio.abc.Clock) -> None:
    registry = WorkRegistry(EventLog([]))
    passed: list[str | None] = []
    with trio.CancelScope() as drain:
        try:
            with registry.track("model_call", "s-1") as unit:
                unit.abort("stall recovery")
                drain.cancel(reason="drain deadline")
                await trio.sleep(1)
        except trio.Cancelled as exc:  # bare, as it came: a turn's `except trio.Cancelled` sees it
            passed.append(exc.reason)
            raise
    assert passed == ["stall recovery"]  # trio's own: the innermost cancelled scope's reason
    assert drain.cancelled_caught
    assert not unit.scope.cancelled_caught
    assert registry.aborts_by_kind == {"model_call": 1}


def nested_group() -> ExceptionGroup[GatewayError]:
    inner = ExceptionGroup("inner", [BadRequestError("first"), NotFoundError("second")])
    return ExceptionGroup("outer", [inner, GatewayError("third")])


def test_chosen_answers_for_a_group_and_names_every_other_member() -> None:
    group = nested_group()
    assert [str(e) for e in leaves(group)] == ["first", "second", "third"]
    error = chosen(group)
    assert isinstance(error, BadRequestError)
    assert error.__notes__ == ["also raised: NotFoundError: second", "also raised: GatewayError: third"]


def test_only_gateway_error_keeps_the_others_and_refuses_a_mixed_group() -> None:
    error = only_gateway_error(nested_group())
    assert error is not None
    assert str(error) == "first"
    assert len(error.__notes__) == 2
    assert only_gateway_error(ExceptionGroup("mixed", [BadRequestError("x"), ValueError("bug")])) is None


async def test_a_handler_failing_twice_answers_with_one_error_naming_the_other(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Before: `raise group.exceptions[0]` raised the handler's own nursery group (not an
    error the app answers) or, flattened, only its first member."""

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def handler() -> Any:
        async def fail(error: GatewayError) -> None:
            raise error  # at its first step: a sibling's failure cannot cancel it first

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fail, BadRequestError("agent: missing"))
            nursery.start_soon(fail, NotFoundError("no session"))

    with pytest.raises(GatewayError) as raised:
        await _until_disconnected(receive, handler)
    assert str(raised.value) in ("agent: missing", "no session")  # trio's order is its own
    [note] = raised.value.__notes__
    assert note.startswith("also raised:")


def test_models_and_tool_clients_are_handed_progress_not_a_work_unit() -> None:
    """So `models/` needs nothing of `work/`, and a fake model (or a test) passes any callable
    (`list.append`) instead of subclassing `WorkUnit`."""
    package = Path(trio_gateway.__file__).parent
    for path in [
        *sorted((package / "models").glob("*.py")),
        package / "tools" / "http.py",
        package / "tools" / "mcp.py",
    ]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not [m for m in imported if m.startswith("trio_gateway.work")], path.name


def test_a_socket_listener_failing_twice_names_both_in_the_error_its_supervisor_gets() -> None:
    group = ExceptionGroup("listener", [OSError("connection refused"), ValueError("bad frame")])
    error = socket_error(group, "Socket Mode connection")
    assert isinstance(error, ListenError)
    assert str(error) == "Socket Mode connection: OSError: connection refused"
    assert error.__notes__ == ["also raised: ValueError: bad frame"]
