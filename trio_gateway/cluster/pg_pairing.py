"""The pairing book in the cluster database (SPEC 12, SPEC 15 "Access"): approvals and pending
codes shared by every node, so an approval made through any node (or the CLI) counts on all of
them with the next message: there is nothing to reload.

Each call is one transaction with the database's deadline (`Database.run`). The rules that
count (three live codes per account, one code message per sender per hour) run under a
transaction-scoped advisory lock per account, so two nodes hearing two strangers at once
never hand out a fourth code. The rules' clock is the caller's `now` (as for the file book):
a code's hour does not need the nodes' clocks to agree to the second.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import cast

import attrs

from trio_gateway.cluster.db import Conn, Database
from trio_gateway.errors import NotFoundError
from trio_gateway.log import EventLog
from trio_gateway.policy.pairing import CODE_MESSAGE_EVERY, CODE_TTL, MAX_PENDING_PER_ACCOUNT, Approval, PendingCode
from trio_gateway.storage.access import new_code, normalise_code, storable

# The advisory lock space of one account's pairing rules (the first key of the two-int form).
_LOCK_SPACE = 0x70616972  # "pair"

_LIVE = "approved_at IS NULL AND expires_at > %(now)s"


@attrs.define(eq=False)
class PgPairingBook:
    db: Database
    log: EventLog
    # A seam for tests: where codes come from.
    make_code: Callable[[], str] = new_code

    async def is_approved(self, channel: str, account_id: str, sender: str) -> bool:
        if not storable(sender):
            return False

        def read(conn: Conn) -> bool:
            row = conn.execute(
                "SELECT 1 FROM pairing_approvals WHERE channel = %s AND account_id = %s AND sender = %s",
                (channel, account_id, sender),
            ).fetchone()
            return row is not None

        return await self.db.run(read)

    async def offer_code(self, channel: str, account_id: str, sender: str, now: dt.datetime) -> PendingCode | None:
        if not storable(sender):
            return None

        def offer(conn: Conn) -> PendingCode | None:
            key = {"ch": channel, "acc": account_id, "sender": sender, "now": now}
            conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_SPACE, f"{channel}\x1f{account_id}"))
            approved = "SELECT 1 FROM pairing_approvals WHERE channel = %(ch)s AND account_id = %(acc)s"
            if conn.execute(approved + " AND sender = %(sender)s", key).fetchone():
                return None
            last = conn.execute(
                "SELECT created_at FROM pairing_codes WHERE channel = %(ch)s AND account_id = %(acc)s"
                " AND sender = %(sender)s",
                key,
            ).fetchone()
            if last is not None and cast(dt.datetime, last[0]) + CODE_MESSAGE_EVERY > now:
                return None
            live = conn.execute(
                f"SELECT count(*) FROM pairing_codes WHERE channel = %(ch)s AND account_id = %(acc)s AND {_LIVE}",
                key,
            ).fetchone()
            if live is not None and cast(int, live[0]) >= MAX_PENDING_PER_ACCOUNT:
                return None
            code = self.make_code()
            conn.execute(
                "INSERT INTO pairing_codes (channel, account_id, sender, code, created_at, expires_at)"
                " VALUES (%(ch)s, %(acc)s, %(sender)s, %(code)s, %(now)s, %(ends)s)"
                " ON CONFLICT (channel, account_id, sender) DO UPDATE SET code = EXCLUDED.code,"
                " created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at, approved_at = NULL",
                {**key, "code": code, "ends": now + CODE_TTL},
            )
            return PendingCode(channel, account_id, sender, code, now, now + CODE_TTL)

        offered = await self.db.run(offer)
        if offered is not None:
            self.log.info("ACCESS", "Pairing code offered", channel=channel, account=account_id, sender=sender)
        return offered

    async def pending(self, channel: str | None, now: dt.datetime) -> list[PendingCode]:
        def read(conn: Conn) -> list[PendingCode]:
            rows = conn.execute(
                "SELECT channel, account_id, sender, code, created_at, expires_at FROM pairing_codes"
                f" WHERE (%(ch)s::text IS NULL OR channel = %(ch)s) AND {_LIVE}"
                " ORDER BY created_at, channel, account_id, sender",
                {"ch": channel, "now": now},
            ).fetchall()
            return [PendingCode(*cast(tuple[str, str, str, str, dt.datetime, dt.datetime], row)) for row in rows]

        return await self.db.run(read)

    async def approvals(self, channel: str | None) -> list[Approval]:
        def read(conn: Conn) -> list[Approval]:
            rows = conn.execute(
                "SELECT channel, account_id, sender, approved_at FROM pairing_approvals"
                " WHERE (%(ch)s::text IS NULL OR channel = %(ch)s) ORDER BY approved_at, channel, account_id, sender",
                {"ch": channel},
            ).fetchall()
            return [Approval(*cast(tuple[str, str, str, dt.datetime], row)) for row in rows]

        return await self.db.run(read)

    async def approve(self, channel: str, code: str, now: dt.datetime) -> Approval:
        wanted = normalise_code(code)

        def approve(conn: Conn) -> Approval | None:
            # One row even if two accounts drew the same code (2^-40): the oldest is approved.
            row = conn.execute(
                "UPDATE pairing_codes SET approved_at = %(now)s WHERE (channel, account_id, sender) = ("
                " SELECT channel, account_id, sender FROM pairing_codes"
                f" WHERE channel = %(ch)s AND code = %(code)s AND {_LIVE}"
                " ORDER BY created_at LIMIT 1 FOR UPDATE) RETURNING account_id, sender",
                {"ch": channel, "code": wanted, "now": now},
            ).fetchone()
            if row is None:
                return None
            account_id, sender = cast(tuple[str, str], row)
            conn.execute(
                "INSERT INTO pairing_approvals VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (channel, account_id, sender) DO UPDATE SET approved_at = EXCLUDED.approved_at",
                (channel, account_id, sender, now),
            )
            return Approval(channel, account_id, sender, now)

        approval = await self.db.run(approve)
        if approval is None:
            raise NotFoundError(
                f"no pending pairing code {wanted!r} on channel {channel!r} (unknown, expired or approved)"
            )
        self.log.info("ACCESS", "Sender approved", channel=channel, account=approval.account_id, sender=approval.sender)
        return approval

    async def revoke(self, channel: str, account_id: str, sender: str) -> bool:
        def revoke(conn: Conn) -> bool:
            gone = conn.execute(
                "DELETE FROM pairing_approvals WHERE channel = %s AND account_id = %s AND sender = %s",
                (channel, account_id, sender),
            )
            return gone.rowcount > 0

        revoked = await self.db.run(revoke)
        if revoked:
            self.log.info("ACCESS", "Approval revoked", channel=channel, account=account_id, sender=sender)
        return revoked
