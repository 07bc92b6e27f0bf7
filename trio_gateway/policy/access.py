"""Access (SPEC 15): may this heard message become a turn? Pure rules, no I/O.

The one place that answers, for every listening channel and both ways a message arrives
(webhook, listener): `channels/heard.py` asks `decide` with the account's keys, what the
platform's module read from the message, and whether the pairing book approved the sender
(asked only when `asks_book` says the answer matters, so an `open` account never pays for it).

    direct  dmPolicy   disabled → refuse · open → accept · allowFrom / approved → accept
                       allowlist → refuse (no reply) · pairing → pair (one code message)
    group   groupPolicy disabled → refuse · group not in `groups` → refuse
                       sender not in `groupAllowFrom` → refuse
                       mention, not addressing the bot → refuse (debug: it is chatter)
"""

from __future__ import annotations

from typing import Literal

import attrs

from trio_gateway.policy.config import AccountConfig

ANY = "*"
LogLevel = Literal["debug", "info"]


@attrs.frozen
class Facts:
    """What the access rules read from one message (the platform module's `Heard`)."""

    chat: Literal["direct", "group"]
    sender: str | None
    # The group chat's id (where the reply goes); unused for a direct message.
    group: str
    addressed: bool


@attrs.frozen
class Accept:
    pass


@attrs.frozen
class Pair:
    """A direct message from an unknown sender under `pairing`: offer a code, no turn."""


@attrs.frozen
class Refuse:
    reason: str
    # `debug` for group chatter that does not address the bot: a busy group would flood the log.
    level: LogLevel = "info"


Decision = Accept | Pair | Refuse
ACCEPT = Accept()


def _listed(value: str | None, listed: list[str]) -> bool:
    return ANY in listed or (value is not None and value in listed)


def asks_book(account: AccountConfig, facts: Facts) -> bool:
    """Whether the pairing book's approval decides this message: a direct message under
    `pairing` or `allowlist` from a sender who is not in `allowFrom`."""
    return (
        facts.chat == "direct"
        and account.dm_policy in ("pairing", "allowlist")
        and facts.sender is not None
        and not _listed(facts.sender, account.allow_from)
    )


def decide(account: AccountConfig, facts: Facts, approved: bool) -> Decision:
    """Accept, pair, or refuse with a reason (the `reason` label of the refusal counter)."""
    if facts.chat == "group":
        return _group(account, facts)
    policy = account.dm_policy
    if policy == "disabled":
        return Refuse("dm-disabled")
    if policy == "open" or _listed(facts.sender, account.allow_from) or approved:
        return ACCEPT
    if facts.sender is None:
        return Refuse("no-sender")
    if policy == "allowlist":
        return Refuse("not-allowed")
    return Pair()


def _group(account: AccountConfig, facts: Facts) -> Decision:
    if account.group_policy == "disabled":
        return Refuse("group-disabled")
    if not _listed(facts.group, account.groups):
        return Refuse("group-not-allowed")
    if not _listed(facts.sender, account.group_allow_from):
        return Refuse("group-sender-not-allowed")
    if account.group_policy == "mention" and not facts.addressed:
        return Refuse("not-addressed", "debug")
    return ACCEPT
