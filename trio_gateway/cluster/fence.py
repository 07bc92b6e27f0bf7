"""Fencing a turn's notices by its session's lease (SPEC 12): see `pg_queue.py`'s docstring.

A node stalled mid-turn (SIGSTOP) comes back after a peer took its session over and ended the
turn; its reply must not reach the queue, or the person gets a reply and a failure notice. The
entry is written in a transaction that share-locks the session's lease row and finds this node
holding it at the epoch the session store knows, as the session's own writes do.
"""

from __future__ import annotations

from typing import Protocol, cast

import attrs

from trio_gateway.cluster.db import Conn
from trio_gateway.cluster.handoffs import lease_key
from trio_gateway.policy.entry import DeliveryEntry


class SessionFence(Protocol):
    """What fences a turn's notice: the session store (`PgSessionStore`)."""

    def epoch_of(self, session_id: str) -> int | None:
        """The epoch of this node's lease on the session (None: not taken here, or lost)."""
        ...

    def refused(self, session_id: str) -> None:
        """A write for the session was refused: forget it here (another node owns it)."""
        ...


@attrs.frozen
class TurnNotice:
    """An entry to write and, for a session's notice, the lease it must be written under."""

    entry: DeliveryEntry
    session_id: str | None = None
    epoch: int | None = None


def fenced_out(conn: Conn, me: str, items: list[TurnNotice]) -> set[int]:
    """Which of `items` (by index) this node may not write: their session's lease is another
    node's, or at another epoch than ours. Share-locked, so no take-over commits before ours.
    A session never leased anywhere (its first write did not commit) is nobody else's."""
    keys = sorted({lease_key(i.session_id) for i in items if i.session_id is not None})
    if not keys:
        return set()
    rows = conn.execute(
        "SELECT key, node_id, epoch FROM leases WHERE key = ANY(%s) ORDER BY key FOR SHARE", (keys,)
    ).fetchall()
    held = {str(r[0]): (str(r[1]), cast(int, r[2])) for r in rows}
    out = set()
    for n, item in enumerate(items):
        if item.session_id is None:
            continue
        row = held.get(lease_key(item.session_id))
        if row is None:
            if item.epoch is not None:
                out.add(n)  # ours once, released or taken since
        elif row[0] != me or (item.epoch is not None and row[1] != item.epoch):
            out.add(n)
    return out
