"""Pairing (SPEC 15, "Access"): the words the access check and the approval surfaces share.

A direct message from a sender the operator has not allowed, under `dmPolicy: "pairing"`, gets
one reply carrying a code; the operator approves the code (CLI, HTTP, Control UI) and from then
on the sender is allowed. The access check (`channels/heard.py`) asks a `PairingBook` two
things (is this sender approved? give this sender a code, if the rules allow one); the
approval surfaces list, approve and revoke. Where the book keeps its records (files under
`access/`, or PostgreSQL in cluster mode) is the storage layer's; the rules are here.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

import attrs

# Uppercase letters and digits without the look-alikes 0 O 1 I.
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_TTL = dt.timedelta(hours=1)
# A sender gets at most one code message per this period.
CODE_MESSAGE_EVERY = dt.timedelta(hours=1)
# Further unknown senders of an account with this many live codes are only logged.
MAX_PENDING_PER_ACCOUNT = 3


@attrs.frozen
class PendingCode:
    """A code given to a sender and not yet approved; gone at `expires_at`."""

    channel: str
    account_id: str
    sender: str
    code: str
    created_at: dt.datetime
    expires_at: dt.datetime


@attrs.frozen
class Approval:
    """A sender the operator allowed on one account (by a code, or by the CLI)."""

    channel: str
    account_id: str
    sender: str
    approved_at: dt.datetime


class PairingBook(Protocol):
    """Approvals and pending codes of every account. Every method is bounded by the store; a
    change is durable (atomic file write, or committed row) before it returns and is seen at
    once by every later call, on every node in cluster mode."""

    async def is_approved(self, channel: str, account_id: str, sender: str) -> bool: ...

    async def offer_code(self, channel: str, account_id: str, sender: str, now: dt.datetime) -> PendingCode | None:
        """A new code to send to `sender` now, or None: it had a code message within
        `CODE_MESSAGE_EVERY`, or the account has `MAX_PENDING_PER_ACCOUNT` live codes."""

    async def pending(self, channel: str | None, now: dt.datetime) -> list[PendingCode]:
        """Live codes, oldest first; of one channel, or of all (None)."""

    async def approve(self, channel: str, code: str, now: dt.datetime) -> Approval:
        """Approve the live code `code` of `channel`: raises `NotFoundError` when there is
        none (unknown, expired, or approved already)."""

    async def revoke(self, channel: str, account_id: str, sender: str) -> bool:
        """Take an approval back; False when there was none."""

    async def approvals(self, channel: str | None) -> list[Approval]: ...
