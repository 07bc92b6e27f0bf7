"""`POST /channels/{channel}/{accountId}/events`: the generic half of a platform's webhook. The
route finds the platform's `ChannelKind` and asks it to check the headers (before the body is
read) and then to verify and read the whole request; the platform part (signature scheme, event
shape) lives in the platform's module (`channels/slack.py`, `telegram.py`, `feishu.py`).

Only channels with a verification scheme we can check take webhooks: any other is refused with
401 rather than trusted. What the platform's module read goes through the same step as a
listener's message (`channels/heard.py`: access rules, origin, turn), so a message is a turn
or not alike by webhook, poll or socket (SPEC 15).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from trio_gateway.channels.base import Webhook
from trio_gateway.channels.heard import HeardOn, NotATurn, submit_heard
from trio_gateway.channels.inbound import UNKNOWN_BOT, AuthFailed, BotSelf, Event, ListenError, WebhookRequest
from trio_gateway.channels.listen import agent_for
from trio_gateway.channels.registry import Identities, kind_of
from trio_gateway.errors import (
    BadRequestError,
    DeliveryValidationError,
    GatewayBusyError,
    NotFoundError,
    UnauthorizedError,
)
from trio_gateway.http.base import Request, Response, Route, json_response
from trio_gateway.http.body import json_object
from trio_gateway.policy.config import AccountConfig
from trio_gateway.runtime.gateway import Gateway


def _webhook(channel: str) -> Webhook:
    kind = kind_of(channel)
    if kind is None or kind.webhook is None:
        raise UnauthorizedError(f"channel {channel!r} has no inbound verification the gateway can check")
    return kind.webhook


def check_headers(
    channel: str,
    headers: Mapping[str, str],
    account: AccountConfig,
    env: Mapping[str, str],
    wall_time: Callable[[], float],
) -> None:
    """Everything that can refuse an event before its body is read (401)."""
    _webhook(channel).check_headers(WebhookRequest(headers, b"", account, env, wall_time, json_object))


def parse(
    channel: str,
    headers: Mapping[str, str],
    body: bytes,
    account: AccountConfig,
    env: Mapping[str, str],
    wall_time: Callable[[], float],
    me: BotSelf = UNKNOWN_BOT,
) -> Event:
    """The whole request: its signature verified (401), then who wrote what (400 when malformed)."""
    return _webhook(channel).parse(WebhookRequest(headers, body, account, env, wall_time, json_object, me))


@attrs.define(eq=False)
class Webhooks:
    """The route itself: account → bot identity → verified event → `submit_heard`."""

    gateway: Gateway
    env: Mapping[str, str]
    wall_time: Callable[[], float]
    identities: Identities = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.identities = Identities(self.env)

    def routes(self) -> list[Route]:
        # A platform cannot send our bearer token: each channel's own signature is checked.
        where = ("channels", "{channel}", "{account_id}", "events")
        return [Route("POST", where, self.event, auth=False, before_body=self.before_body)]

    async def event(self, request: Request, channel: str, account_id: str) -> Response:
        account = self.account(channel, account_id)
        event = parse(channel, request.headers, request.body, account, self.env, self.wall_time)
        if event.message is not None and event.message.chat == "group" and account.group_policy == "mention":
            # Only here does it matter whether the message addresses the bot: read it again
            # knowing who the bot is (asked of the platform once per account, then kept).
            me = await self._me(channel, account_id, account)
            event = parse(channel, request.headers, request.body, account, self.env, self.wall_time, me)
        if event.challenge is not None:
            return json_response(200, {"challenge": event.challenge})
        if event.message is None:
            return json_response(200, {"ignored": event.ignored or "not a message"})
        kind = kind_of(channel)
        listeners = self.gateway.listeners
        on = HeardOn(
            channel,
            account_id,
            self._agent_for(channel, account_id),
            kind.address if kind else None,
            account,
            listeners.access if listeners is not None else None,
        )
        # A platform retries a delivery it thinks failed (Slack retries, Telegram and Feishu
        # resend): the event id, recorded with the turn, makes the retry a no-op (SPEC 11).
        try:
            accepted = await submit_heard(self.gateway.submit_inbound, on, event.message)
        except DeliveryValidationError as exc:
            raise BadRequestError(f"sender: {exc}") from None
        if accepted is None:
            return json_response(200, {"duplicate": True})
        if isinstance(accepted, NotATurn):
            return json_response(200, {"ignored": accepted.why})
        return json_response(200, {"sessionId": accepted[0], "turnId": accepted[1]})

    async def _me(self, channel: str, account_id: str, account: AccountConfig) -> BotSelf:
        try:
            return await self.identities.of(channel, account_id, account)
        except (ListenError, AuthFailed) as exc:
            # The platform retries what was not answered 2xx: nothing is lost by waiting.
            raise GatewayBusyError(f"could not ask {channel} who the bot is ({exc}); retry later") from None

    def before_body(self, headers: Mapping[str, str], channel: str, account_id: str) -> None:
        """The account exists and the headers could carry a valid signature: else 404 / 401
        without reading a byte of the body."""
        check_headers(channel, headers, self.account(channel, account_id), self.env, self.wall_time)

    def account(self, channel: str, account_id: str) -> AccountConfig:
        section = self.gateway.config.channels.get(channel)
        account = section.accounts.get(account_id) if section is not None else None
        if account is None:
            raise NotFoundError(f"no account {account_id!r} configured for channel {channel!r}")
        return account

    def _agent_for(self, channel: str, account_id: str) -> str:
        name = agent_for(self.gateway.config.agents, channel, account_id)
        if name is not None:
            return name
        raise NotFoundError(f"no agent is bound to channel {channel!r} with account {account_id!r}")
