"""The one step between "a message was heard" and "a turn is accepted".

Both ways a message reaches the gateway go through `submit_heard`: a listener
(`channels/listen.py`: long poll or websocket) and a webhook (`http/app.py`, the
`POST /channels/{channel}/{accountId}/events` route). Here the sender is checked against the
platform's address rule, the access rules decide (SPEC 15: `policy/access.py`, with the
pairing book's word on the sender), and the origin the reply will carry is built; then the
turn is handed to the gateway. Every check an inbound message must pass belongs here, and
nowhere else. What is not a turn may still get one reply, durable in the outbox like any
other: a pairing code, or the account's `unsupportedMediaReply`.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from trio_gateway.channels.access import Access
from trio_gateway.channels.base import AddressRule, check_address
from trio_gateway.channels.inbound import Heard
from trio_gateway.policy.commands import CommandName, parse_command
from trio_gateway.policy.config import AccountConfig
from trio_gateway.policy.origin import Origin


class Submit(Protocol):
    """The gateway's intake for a heard message (`Gateway.submit_inbound`)."""

    async def __call__(
        self,
        *,
        agent_id: str,
        origin: Origin,
        prompt: str,
        inbound_id: str | None,
        sender: str | None = None,
        command: CommandName | None = None,
    ) -> tuple[str, str] | None:
        """(session, turn) of a new durable turn; None: the message was known already. An
        `inbound_id` of None (a webhook event without an id) cannot be recognised again.
        `command`: the text is a chat command (SPEC 15), answered by the gateway at once;
        (session, the reply's key) once its reply is durable."""


@attrs.frozen
class HeardOn:
    """Where a message was heard: the account it came to and the agent bound to that account."""

    channel: str
    account_id: str
    agent_id: str
    # The platform's address rule (its `ChannelKind.address`); None: any address is accepted.
    address: AddressRule | None
    # The account's keys (its access rules); None: a caller with no config at hand (unit
    # tests of the origin), which accepts every message.
    account: AccountConfig | None = None
    # The access check's book, outbox and counters; None as `account`.
    access: Access | None = None


@attrs.frozen
class NotATurn:
    """A message the access rules kept from the model (or one with nothing to read): `why`
    is the refusal's reason, or what was sent instead (`pairing-code`, `media-notice`)."""

    why: str


HeardResult = tuple[str, str] | NotATurn | None


def origin_of(on: HeardOn, heard: Heard) -> Origin:
    return Origin(on.channel, heard.to, on.account_id, context_token=heard.context_token, thread=heard.thread)


async def submit_heard(submit: Submit, on: HeardOn, heard: Heard) -> HeardResult:
    """Heard → access → origin → submit: (session, turn); None when `heard.id` was heard
    before in this conversation; `NotATurn` when the access rules refused it, or it got a
    pairing code or the media notice instead. Raises `DeliveryValidationError` when the
    sender is no address on the platform (a reply could never reach it): the caller skips or
    refuses the message, and nothing is written."""
    check_address(on.channel, heard.to, on.address)
    origin = origin_of(on, heard)
    if on.account is not None and on.access is not None:
        verdict = await on.access.check(on.channel, on.account_id, on.agent_id, on.account, heard, origin)
        if verdict is not None:
            return NotATurn(verdict)
    elif heard.media:
        return NotATurn("media")
    # After the access check: commands are for allowed senders. A Telegram `/cmd@name` names
    # this bot (its parser marks it addressed only then; `groupPolicy: open` takes any name).
    command = parse_command(heard.text)
    if command is not None:
        sender = heard.sender or heard.to
        return await submit(
            agent_id=on.agent_id, origin=origin, prompt=heard.text, inbound_id=heard.id, sender=sender, command=command
        )
    return await submit(agent_id=on.agent_id, origin=origin, prompt=heard.text, inbound_id=heard.id)
