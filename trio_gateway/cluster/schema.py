"""The cluster database's tables, created and migrated at start.

Migrations are numbered and only ever appended. Each node runs `migrate` at start under one
transaction-scoped advisory lock, so nodes starting together migrate once. A database newer
than this gateway (a later version ran there) is refused rather than written with old rules.
"""

from __future__ import annotations

from typing import cast

from trio_gateway.cluster.db import Conn
from trio_gateway.errors import ClusterDatabaseError

# Any fixed number: all nodes take the same lock while migrating.
_MIGRATION_LOCK = 0x7472696F  # "trio"

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE nodes (
            node_id      text PRIMARY KEY,
            state        text NOT NULL,            -- running | draining | stopped
            host         text NOT NULL,
            pid          integer NOT NULL,
            started_at   timestamptz NOT NULL,
            heartbeat_at timestamptz NOT NULL,
            generation   integer NOT NULL DEFAULT 0
        );
        CREATE TABLE deliveries (
            id              text PRIMARY KEY,       -- sorts by creation time (SPEC 7)
            idempotency_key text NOT NULL UNIQUE,
            state           text NOT NULL CHECK (state IN ('pending', 'failed')),
            next_attempt_at timestamptz NOT NULL,
            claim_node      text,                   -- NULL: nobody holds it
            claim_fence     bigint NOT NULL DEFAULT 0,
            lease_until     timestamptz,
            send_started_at timestamptz,
            entry           jsonb NOT NULL          -- the SPEC 7 entry
        );
        CREATE INDEX deliveries_due ON deliveries (next_attempt_at, id)
            WHERE state = 'pending' AND claim_node IS NULL;
        CREATE INDEX deliveries_claimed ON deliveries (claim_node) WHERE claim_node IS NOT NULL;
        CREATE TABLE leases (
            key        text PRIMARY KEY,            -- e.g. inbound:<channel>:<account>
            node_id    text,                        -- NULL: released
            epoch      bigint NOT NULL DEFAULT 0,   -- moves at every change of holder
            expires_at timestamptz
        );
        """,
    ),
    (
        2,
        """
        CREATE TABLE sessions (
            id            text PRIMARY KEY,
            record        jsonb NOT NULL,          -- history and accepted turns (SPEC 6)
            pending_turns integer NOT NULL,        -- turns accepted and not finished
            updated_at    timestamptz NOT NULL
        );
        CREATE INDEX sessions_pending ON sessions (id) WHERE pending_turns > 0;
        """,
    ),
    (
        3,
        """
        CREATE TABLE cron_slots (
            cron_id      text PRIMARY KEY,
            next_fire_at timestamptz NOT NULL      -- the start of the next unfired slot
        );
        """,
    ),
    (
        4,
        """
        CREATE TABLE inbound_cursors (
            channel    text NOT NULL,
            account_id text NOT NULL,
            cursor     jsonb,                      -- the listener's place (SPEC 11), as in inbound/
            updated_at timestamptz NOT NULL,
            PRIMARY KEY (channel, account_id)
        );
        """,
    ),
    (
        5,
        # SPEC 15 "Order": whose entries go one at a time. Computed from the entry itself, so
        # every write (enqueue, reroute by `delivery repair`) keeps it right with no code of its
        # own; the unit separator cannot occur in a channel name or an account id.
        """
        ALTER TABLE deliveries ADD COLUMN conversation text GENERATED ALWAYS AS (
            (entry->>'channel') || E'\\x1f' || coalesce(entry->>'accountId', '') || E'\\x1f' || (entry->>'to')
        ) STORED;
        CREATE INDEX deliveries_conversation ON deliveries (conversation, id) WHERE state = 'pending';
        """,
    ),
    (
        6,
        # SPEC 15 "Access": who may talk to the agent, shared by every node (cluster/pg_pairing.py).
        # A code row stays after its approval or expiry while it still rules "one code message per
        # sender per hour" (`created_at`); `approved_at` set: no longer pending.
        """
        CREATE TABLE pairing_approvals (
            channel     text NOT NULL,
            account_id  text NOT NULL,
            sender      text NOT NULL,
            approved_at timestamptz NOT NULL,
            PRIMARY KEY (channel, account_id, sender)
        );
        CREATE TABLE pairing_codes (
            channel     text NOT NULL,
            account_id  text NOT NULL,
            sender      text NOT NULL,
            code        text NOT NULL,
            created_at  timestamptz NOT NULL,      -- when the code message went out
            expires_at  timestamptz NOT NULL,
            approved_at timestamptz,
            PRIMARY KEY (channel, account_id, sender)
        );
        CREATE INDEX pairing_codes_by_code ON pairing_codes (channel, code) WHERE approved_at IS NULL;
        """,
    ),
    (
        7,
        # SPEC 12 "one conversation, one session": the session a conversation's turns join,
        # cluster-wide (a new one is claimed here in the same transaction as its first write,
        # so two nodes never open two), turns accepted on a node for a session a peer owns
        # (the owner moves each into its record, deleting the row in that same write), and how
        # each turn ended, for a `wait` asked on any node.
        """
        CREATE TABLE conversations (
            key        text PRIMARY KEY,           -- agent and origin without its context token
            session_id text NOT NULL
        );
        CREATE TABLE handoffs (
            seq         bigserial PRIMARY KEY,     -- the order the owner takes them in
            session_id  text NOT NULL,
            agent       text NOT NULL,
            turn        jsonb NOT NULL,            -- the accepted TurnRecord
            inbound_id  text,
            from_node   text NOT NULL,
            accepted_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX handoffs_session ON handoffs (session_id, seq);
        CREATE TABLE turn_outcomes (
            session_id  text NOT NULL,
            turn_id     text NOT NULL,
            ok          boolean NOT NULL,
            text        text NOT NULL,
            finished_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (session_id, turn_id)
        );
        CREATE INDEX turn_outcomes_age ON turn_outcomes (finished_at);
        """,
    ),
]
LATEST = MIGRATIONS[-1][0]


def _current_version(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return cast(int, row[0]) if row is not None else 0


def migrate(conn: Conn) -> tuple[int, int]:
    """Bring the schema to `LATEST`; returns (version found, version now)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
    )
    found = _current_version(conn)
    if found > LATEST:
        raise ClusterDatabaseError(
            f"the cluster database has schema version {found}, newer than this gateway's {LATEST}; upgrade this node"
        )
    for version, sql in MIGRATIONS:
        if version > found:
            conn.execute(sql.encode())
            conn.execute("INSERT INTO schema_version VALUES (%s, now())", (version,))
    return found, LATEST
