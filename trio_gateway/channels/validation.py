"""Does an address fit its channel (SPEC 7)? Pure: the one place the address rules live.

Checked at enqueue, so a mismatch is refused before anything is written: the seed's incident
was a WeChat id (`...@im.wechat`) queued for Feishu, which answered `99992360 Invalid ids`
twenty times. A pattern that accepts any `x@y` as a Feishu e-mail lets exactly that entry
through, so Feishu names the foreign id suffixes it must never accept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from trio_gateway.errors import DeliveryValidationError

if TYPE_CHECKING:
    from trio_gateway.policy.config import ChannelConfig


@attrs.frozen
class Rule:
    pattern: re.Pattern[str]
    # What the rule says, in the words an operator reads in the error.
    says: str
    # Address suffixes that belong to other channels and are refused even when `pattern` matches.
    foreign_suffixes: tuple[str, ...] = ()


_FEISHU = Rule(
    re.compile(
        r"^(?:o[unc]_[A-Za-z0-9_-]+"  # open_id / union_id / chat_id
        r"|[A-Za-z0-9][A-Za-z0-9_-]*"  # user_id
        r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})$"  # e-mail
    ),
    "an ou_/on_/oc_ id, a user id or an e-mail address, never a WeChat (@im.wechat / @im.bot) id",
    foreign_suffixes=("@im.wechat", "@im.bot"),
)

RULES: dict[str, Rule] = {
    "openclaw-weixin": Rule(re.compile(r"^[A-Za-z0-9_.-]+@im\.wechat$"), "a WeChat user id ending in @im.wechat"),
    "feishu": _FEISHU,
    "slack": Rule(re.compile(r"^[CUWGD][A-Z0-9]{8,}$"), "a Slack id matching ^[CUWGD][A-Z0-9]{8,}$"),
    "discord": Rule(re.compile(r"^(?:user|channel):\d{17,20}$"), "user:<snowflake> or channel:<snowflake>"),
    "telegram": Rule(re.compile(r"^(?:-?\d+|@[A-Za-z][A-Za-z0-9_]{3,31})$"), "a numeric chat id or @username"),
    "console": Rule(re.compile(r"^\S(?:.*\S)?$", re.DOTALL), "any non-empty address"),
}


_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _mismatch(channel: str, to: str, says: str) -> DeliveryValidationError:
    return DeliveryValidationError(f"channel={channel}, address={to}: the address must be {says}")


def check_address(channel: str, to: str | None) -> str | None:
    """Raise `DeliveryValidationError` when `to` cannot be an address on `channel`.

    Returns a warning for a channel with no rule (accepted, as SPEC 7 asks), else None.
    """
    if not to or not to.strip():
        raise _mismatch(channel, to or "", "non-empty")
    if _CONTROLS.search(to):
        # No platform id has one, and in a log line or console.jsonl reader a newline forges lines.
        raise _mismatch(channel, ascii(to), "free of control characters (newlines, escapes)")
    rule = RULES.get(channel)
    if rule is None:
        return f"channel={channel} has no address rule; address={to} accepted unchecked"
    if to.lower().endswith(rule.foreign_suffixes) or not rule.pattern.fullmatch(to):
        raise _mismatch(channel, to, rule.says)
    return None


def fits(channel: str, to: str | None) -> bool:
    try:
        check_address(channel, to)
    except DeliveryValidationError:
        return False
    return True


def check_configured(channels: Mapping[str, ChannelConfig], channel: str, to: str, account_id: str | None) -> None:
    """An explicit delivery (`delivery create`, `POST /v1/deliveries`) must name a channel this
    gateway can send on: refused now, rather than dead-lettered a rescan later. `console` needs
    no account; any other channel needs the account (or, with none named, any account). An
    address that does not fit its channel is left to the outbox, which refuses it with its
    `[VALIDATION]` line (SPEC 8)."""
    try:
        check_address(channel, to)
    except DeliveryValidationError:
        return
    if channel == "console":
        return
    section = channels.get(channel)
    accounts = section.accounts if section is not None else {}
    if not accounts:
        raise DeliveryValidationError(
            f"channel={channel}: not configured on this gateway (add channels.{channel}.accounts.<id> to gateway.json)"
        )
    if account_id is not None and account_id not in accounts:
        raise DeliveryValidationError(
            f"channel={channel}, account={account_id}: no such account (configured: {', '.join(accounts)})"
        )
