"""A pairing book kept in memory only (SPEC 15's rules, none of its durability): the stand-in
`app/assemble.py` wires while the file-backed book (`storage/access.py`, issue 20's pairing
branch) is not merged. Approvals are lost at a restart.
"""

from __future__ import annotations

import datetime as dt
import secrets

import attrs

from trio_gateway.errors import NotFoundError
from trio_gateway.policy.pairing import (
    CODE_ALPHABET,
    CODE_LENGTH,
    CODE_MESSAGE_EVERY,
    CODE_TTL,
    MAX_PENDING_PER_ACCOUNT,
    Approval,
    PendingCode,
)


@attrs.define
class MemoryBook:
    approved: dict[tuple[str, str, str], Approval] = attrs.Factory(dict)
    codes: list[PendingCode] = attrs.Factory(list)
    # When each (channel, account, sender) last got a code message.
    messaged: dict[tuple[str, str, str], dt.datetime] = attrs.Factory(dict)

    async def is_approved(self, channel: str, account_id: str, sender: str) -> bool:
        return (channel, account_id, sender) in self.approved

    async def offer_code(self, channel: str, account_id: str, sender: str, now: dt.datetime) -> PendingCode | None:
        self.codes = [c for c in self.codes if c.expires_at > now]
        last = self.messaged.get((channel, account_id, sender))
        if last is not None and now - last < CODE_MESSAGE_EVERY:
            return None
        live = [c for c in self.codes if (c.channel, c.account_id) == (channel, account_id)]
        if len(live) >= MAX_PENDING_PER_ACCOUNT:
            return None
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        pending = PendingCode(channel, account_id, sender, code, now, now + CODE_TTL)
        self.codes = [c for c in self.codes if (c.channel, c.account_id, c.sender) != (channel, account_id, sender)]
        self.codes.append(pending)
        self.messaged[(channel, account_id, sender)] = now
        return pending

    async def pending(self, channel: str | None, now: dt.datetime) -> list[PendingCode]:
        return [c for c in self.codes if c.expires_at > now and channel in (None, c.channel)]

    async def approve(self, channel: str, code: str, now: dt.datetime) -> Approval:
        for pending in await self.pending(channel, now):
            if pending.code == code.strip().upper():
                self.codes.remove(pending)
                approval = Approval(channel, pending.account_id, pending.sender, now)
                self.approved[(channel, pending.account_id, pending.sender)] = approval
                return approval
        raise NotFoundError(f"no pending pairing code {code!r} for channel {channel!r}")

    async def revoke(self, channel: str, account_id: str, sender: str) -> bool:
        return self.approved.pop((channel, account_id, sender), None) is not None

    async def approvals(self, channel: str | None) -> list[Approval]:
        return [a for a in self.approved.values() if channel in (None, a.channel)]
