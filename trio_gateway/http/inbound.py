"""`POST /channels/{channel}/{accountId}/events`: the generic half of a platform's webhook. The
route finds the platform's `ChannelKind` and asks it to check the headers (before the body is
read) and then to verify and read the whole request; the platform part (signature scheme, event
shape) lives in the platform's module (`channels/slack.py`, `telegram.py`, `feishu.py`).

Only channels with a verification scheme we can check take webhooks: any other is refused with
401 rather than trusted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from trio_gateway.channels.base import Webhook
from trio_gateway.channels.inbound import Event, WebhookRequest
from trio_gateway.channels.registry import kind_of
from trio_gateway.errors import UnauthorizedError
from trio_gateway.http.body import json_object
from trio_gateway.policy.config import AccountConfig


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
) -> Event:
    """The whole request: its signature verified (401), then who wrote what (400 when malformed)."""
    return _webhook(channel).parse(WebhookRequest(headers, body, account, env, wall_time, json_object))
