"""The access check's moving parts (SPEC 15): the pairing book it asks, the one reply it may
send instead of a turn, and the refusals it logs and counts. The rules themselves are pure
(`policy/access.py`); `channels/heard.py` calls `Access.check` for every heard message, from
a listener or a webhook alike.

One `Access` per process (its counters are `/metrics` counters: they never go back), built
where the listeners are (`app/assemble.py`) and reached by the webhook route through the
generation's listener supervisor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable

import attrs

from trio_gateway.channels.inbound import Heard
from trio_gateway.log import EventLog
from trio_gateway.policy.access import Facts, Pair, Refuse, asks_book, decide
from trio_gateway.policy.config import AccountConfig
from trio_gateway.policy.origin import Origin
from trio_gateway.policy.pairing import PairingBook

# (agent id, origin, text, idempotency key) → one durable delivery through the outbox.
Say = Callable[[str, Origin, str, str], Awaitable[object]]


def pairing_text(channel: str, code: str) -> str:
    return (
        "This assistant answers only people its operator has approved.\n"
        f"Your pairing code: {code}\n"
        f"Ask the operator to run: trio-gateway pairing approve {channel} {code}"
    )


@attrs.define(eq=False)
class Access:
    book: PairingBook
    log: EventLog
    now: Callable[[], dt.datetime]
    # The generation's outbox, set when its delivery side is built (listener factory).
    say: Say | None = None
    # Refused messages by (channel, account, reason): `trio_gateway_inbound_refused_total`.
    refused: dict[tuple[str, str, str], int] = attrs.Factory(dict)

    async def check(
        self, channel: str, account_id: str, agent_id: str, account: AccountConfig, heard: Heard, origin: Origin
    ) -> str | None:
        """None: the message becomes a turn. Else why not (a refusal's reason, or the one
        reply sent in its place); the refusal is logged and counted here."""
        facts = Facts(heard.chat, heard.sender, heard.to, heard.addressed)
        sender = heard.sender
        approved = (
            sender is not None
            and asks_book(account, facts)
            and await self.book.is_approved(channel, account_id, sender)
        )
        decision = decide(account, facts, approved)
        if isinstance(decision, Refuse):
            self._refuse(channel, account_id, sender, decision.reason, decision.level)
            return decision.reason
        if isinstance(decision, Pair):
            assert sender is not None  # `decide` refuses a sender it cannot name
            await self._pair(channel, account_id, agent_id, sender, origin)
            return "pairing"
        if heard.media or not heard.text.strip():
            return await self._media(agent_id, account, heard, origin)
        return None

    def _refuse(self, channel: str, account_id: str, sender: str | None, reason: str, level: str) -> None:
        key = (channel, account_id, reason)
        self.refused[key] = self.refused.get(key, 0) + 1
        line = f"Refused channel={channel} account={account_id} sender={sender} reason={reason}"
        if level == "debug":
            self.log.debug("ACCESS", line)
        else:
            self.log.info("ACCESS", line)

    async def _pair(self, channel: str, account_id: str, agent_id: str, sender: str, origin: Origin) -> None:
        """One code message when the book gives a code (one per sender per hour, three pending
        per account); otherwise only the refusal line."""
        offered = await self.book.offer_code(channel, account_id, sender, self.now())
        self._refuse(channel, account_id, sender, "pairing", "info" if offered is not None else "debug")
        if offered is None or self.say is None:
            return
        key = f"pairing:{channel}:{account_id}:{sender}:{offered.code}"
        await self.say(agent_id, origin, pairing_text(channel, offered.code), key)
        self.log.info("ACCESS", f"Pairing code sent channel={channel} account={account_id} sender={sender}")

    async def _media(self, agent_id: str, account: AccountConfig, heard: Heard, origin: Origin) -> str:
        """A message with nothing to read: in a direct chat, the account's notice (once per
        message; `""` says nothing); in a group, nothing (the group did not ask for it)."""
        notice = account.unsupported_media_reply
        if heard.chat != "direct" or not notice or self.say is None:
            return "media"
        # Keyed by the message, so a platform that dedupes shows one notice for a re-read one.
        key = f"media:{origin.channel}:{origin.account_id}:{heard.id}" if heard.id else ""
        await self.say(agent_id, origin, notice, key)
        return "media-notice"
