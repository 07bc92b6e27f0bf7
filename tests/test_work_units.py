"""Units of work (work/units.py): progress of a unit is progress of every unit it runs inside,
so `gateway status` (`lastProgressAgeSeconds`) and a drain's blockers (oldest progress first)
show a subagent run as moving while a model call inside it streams."""

from __future__ import annotations

import trio

from trio_gateway.log import EventLog
from trio_gateway.work.units import WorkRegistry


async def test_progress_inside_nested_subagent_runs_is_their_progress(autojump_clock: trio.abc.Clock) -> None:
    registry = WorkRegistry(EventLog())
    with (
        registry.track("embedded_run", "s-1-1") as run,
        registry.track("embedded_run", "s-1-1", parent=run) as nested,
        registry.track("model_call", "s-1-1", parent=nested) as call,
        registry.track("tool_call", "s-1-1", parent=run) as sibling,
    ):
        await trio.sleep(30)
        call.progress("model_call:streaming")
        now = trio.current_time()
        assert [u.idle_for(now) for u in (call, nested, run)] == [0, 0, 0]
        assert sibling.idle_for(now) == 30  # its sibling's progress is not its own
        assert call.last_progress == "model_call:streaming"
        assert (nested.last_progress, run.last_progress) == ("embedded_run:started", "embedded_run:started")
