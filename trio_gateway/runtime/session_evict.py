"""Idle sessions leave memory (issue 9: sessions were never evicted, so memory grew with every
origin that ever wrote). Their files stay in `sessions/`; a new turn for one reads it back.

What stays in memory per evicted session is its id, its origin key and its turn-id counter
(`SessionRecord.seq`, also on disk; kept in case the file is older after a failed save), so a
turn id is never handed out twice: deliveries are keyed by turn id.
"""

from __future__ import annotations

import attrs

from trio_gateway.runtime.session import Session

# How often the sweep runs, as a fraction of the idle bound, within these limits.
MIN_SWEEP_SECONDS = 1.0
MAX_SWEEP_SECONDS = 300.0


def sweep_interval(idle_seconds: float) -> float:
    return min(max(idle_seconds / 4, MIN_SWEEP_SECONDS), MAX_SWEEP_SECONDS)


def evictable(session: Session, last_active: float, now: float, idle_seconds: float) -> bool:
    """Nothing of it runs, waits or is owed (no accepted turn in its record), and nothing has
    been submitted to it for `idle_seconds`."""
    return (
        not session.busy
        and session.waiting == 0
        and session.current is None
        and not session.subagents
        and not session.record.turns
        and now - last_active >= idle_seconds
    )


@attrs.define
class Evicted:
    """What is kept of an evicted session."""

    seq: int
