"""One conversation, one session, cluster-wide (SPEC 12): the SQL of the session directory.

    conversations   key -> the session a conversation's turns join (reserved by the first node
                    that needs one: `INSERT ... ON CONFLICT DO NOTHING`, so two never open two)
    handoffs        turns a node accepted for a session a live peer owns; the owner moves each
                    into its record in the same transaction as that record's write
    turn_outcomes   how a turn ended, so a `wait` asked on any node gets its answer

Each function runs inside the caller's transaction (`Database.run`); `pg_sessions.py` is the
store built on them. Every time compared is the database's `now()`.
"""

from __future__ import annotations

import json
from typing import Any

from psycopg.types.json import Jsonb

from trio_gateway.cluster.db import Conn
from trio_gateway.cluster.leases import LIVE_NODE
from trio_gateway.cluster.notify import TURN, notify
from trio_gateway.policy import codec
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import HandedOff, HandOff, RemoteOutcome
from trio_gateway.storage.sessions import TurnRecord

# Outcomes are for a waiter that arrives within seconds; an hour is plenty.
OUTCOME_KEEP = "1 hour"


def lease_key(session_id: str) -> str:
    return f"session:{session_id}"


def conversation_key(agent_id: str, conversation: Origin | None) -> str:
    """The same key on every node: the agent and the origin without its per-message context."""
    return json.dumps([agent_id, codec.unstructure(conversation)], sort_keys=True, separators=(",", ":"))


def reserve(conn: Conn, key: str, candidate: str) -> str | None:
    """`candidate` becomes the conversation's session, unless it has one: then that one's id.
    None: reserved for `candidate`."""
    row = conn.execute(
        "INSERT INTO conversations (key, session_id) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING RETURNING 1",
        (key, candidate),
    ).fetchone()
    if row is not None:
        return None
    found = conn.execute("SELECT session_id FROM conversations WHERE key = %s", (key,)).fetchone()
    return None if found is None else str(found[0])


def point(conn: Conn, key: str, session_id: str) -> None:
    """A session asked for by id becomes its conversation's (as on one node: the latest wins)."""
    conn.execute(
        "INSERT INTO conversations (key, session_id) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET session_id = EXCLUDED.session_id",
        (key, session_id),
    )


def live_owner(conn: Conn, session_id: str, me: str, dead_after: float, *, lock: bool = False) -> str | None:
    """The live peer holding the session's lease (not this node); `lock`: keep it from moving
    until the caller's transaction ends."""
    row = conn.execute(
        "SELECT l.node_id FROM leases l WHERE l.key = %(key)s AND l.node_id IS NOT NULL AND l.node_id <> %(me)s"
        f" AND l.expires_at >= now() AND {LIVE_NODE.format(node='l.node_id')}" + (" FOR SHARE" if lock else ""),
        {"key": lease_key(session_id), "me": me, "dead_after": dead_after},
    ).fetchone()
    return None if row is None else str(row[0])


def hand_off(
    conn: Conn, session_id: str, agent_id: str, turn: TurnRecord, inbound_id: str | None, me: str, dead_after: float
) -> HandOff:
    """Write `turn` for the session's live owner and wake it (on commit)."""
    owner = live_owner(conn, session_id, me, dead_after, lock=True)
    if owner is None:
        return "free"
    if inbound_id is not None and _heard(conn, session_id, inbound_id):
        return "heard"
    conn.execute(
        "INSERT INTO handoffs (session_id, agent, turn, inbound_id, from_node) VALUES (%s, %s, %s, %s, %s)",
        (session_id, agent_id, _jsonb(turn), inbound_id, me),
    )
    notify(conn, TURN, owner)
    return "written"


def _heard(conn: Conn, session_id: str, inbound_id: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM sessions WHERE id = %(s)s AND record->'inboundIds' ? %(i)s)"
        " OR EXISTS (SELECT 1 FROM handoffs WHERE session_id = %(s)s AND inbound_id = %(i)s)",
        {"s": session_id, "i": inbound_id},
    ).fetchone()
    return bool(row and row[0])


def owned_handoffs(conn: Conn, me: str, skip: list[int], session_id: str | None) -> list[HandedOff]:
    """Turns handed to sessions whose lease this node holds (or to that one), oldest first."""
    rows = conn.execute(
        "SELECT h.seq, h.session_id, h.agent, h.turn, h.inbound_id FROM handoffs h"
        " JOIN leases l ON l.key = 'session:' || h.session_id AND l.node_id = %s"
        " WHERE NOT h.seq = ANY(%s::bigint[]) AND (%s::text IS NULL OR h.session_id = %s)"
        " ORDER BY h.seq LIMIT 500",
        (me, skip, session_id, session_id),
    ).fetchall()
    return [_handed(row) for row in rows]


def handoffs_of(conn: Conn, session_id: str) -> list[HandedOff]:
    rows = conn.execute(
        "SELECT seq, session_id, agent, turn, inbound_id FROM handoffs WHERE session_id = %s ORDER BY seq",
        (session_id,),
    ).fetchall()
    return [_handed(row) for row in rows]


def _handed(row: tuple[Any, ...]) -> HandedOff:
    seq, session_id, agent, turn, inbound_id = row
    return HandedOff(int(seq), str(session_id), str(agent), codec.structure(turn, TurnRecord), inbound_id)


def settle_absorbed(conn: Conn, seqs: list[int], outcomes: list[tuple[str, str, bool, str]]) -> None:
    """In a session write's transaction: the rows it absorbed go, the outcomes it carries stay."""
    if seqs:
        conn.execute("DELETE FROM handoffs WHERE seq = ANY(%s)", (seqs,))
    if outcomes:
        conn.execute(
            "INSERT INTO turn_outcomes (session_id, turn_id, ok, text)"
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::boolean[], %s::text[])"
            " ON CONFLICT (session_id, turn_id) DO NOTHING",
            tuple(list(column) for column in zip(*outcomes, strict=True)),
        )


def outcome(conn: Conn, session_id: str, turn_id: str) -> RemoteOutcome:
    # One statement, so one snapshot: in two, a turn taken and finished between them would be
    # found in neither place (READ COMMITTED gives each statement its own).
    row = conn.execute(
        "SELECT o.ok, o.text, EXISTS (SELECT 1 FROM handoffs WHERE session_id = %(s)s AND turn->>'id' = %(t)s)"
        " OR EXISTS (SELECT 1 FROM sessions WHERE id = %(s)s AND record->'turns' @> %(match)s)"
        " FROM (SELECT 1) AS one LEFT JOIN turn_outcomes o ON o.session_id = %(s)s AND o.turn_id = %(t)s",
        {"s": session_id, "t": turn_id, "match": _jsonb([{"id": turn_id}])},
    ).fetchone()
    assert row is not None
    ok, text, waiting = row
    if ok is not None:
        return bool(ok), str(text)
    return "pending" if waiting else "unknown"


def forget_old_outcomes(conn: Conn) -> None:
    conn.execute(f"DELETE FROM turn_outcomes WHERE finished_at < now() - interval '{OUTCOME_KEEP}'")


def _jsonb(value: object) -> Jsonb:
    return Jsonb(codec.unstructure(value))
