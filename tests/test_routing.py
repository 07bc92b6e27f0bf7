"""The routing rule (SPEC 7, policy/routing.py): a reply goes to the requester origin's channel,
else its deliveryChannel, else the agent's first channel; its address and account come from the
same origin as its channel, never mixed with the agent's (the seed's WeChat notice reached Feishu
through such a mix)."""

from __future__ import annotations

import pytest

from trio_gateway.policy.config import AgentConfig
from trio_gateway.policy.origin import Origin
from trio_gateway.policy.routing import Route, resolve

WX = "openclaw-weixin"
AGENT = AgentConfig(account_id="bot-agent", channels=["feishu", WX])
ROUTES = {
    "the origin's channel, account and address": (
        Origin(WX, "u1@im.wechat", "bot-2"),
        Route(WX, "u1@im.wechat", "bot-2", "origin"),
    ),
    "the origin's channel even when it is not the agent's first": (
        Origin("telegram", "555", None),
        Route("telegram", "555", "bot-agent", "origin"),
    ),
    "the origin's channel over its deliveryChannel": (
        Origin(WX, "u1@im.wechat", "bot-2", delivery_channel="slack"),
        Route(WX, "u1@im.wechat", "bot-2", "origin"),
    ),
    "deliveryChannel when the origin names no channel": (
        Origin(None, "C0123456789", "T1", delivery_channel="slack"),
        Route("slack", "C0123456789", "T1", "origin.deliveryChannel"),
    ),
    "the agent's first channel, with a warning, when the origin names none": (
        Origin(None, "ops", None),
        Route("feishu", "ops", "bot-agent", "agent-fallback"),
    ),
    "the agent's first channel when there is no origin": (
        None,
        Route("feishu", None, "bot-agent", "agent-fallback"),
    ),
}


@pytest.mark.parametrize(("origin", "route"), ROUTES.values(), ids=list(ROUTES))
def test_a_reply_goes_where_its_origin_says(origin: Origin | None, route: Route) -> None:
    assert resolve(origin, AGENT) == route
    assert resolve(origin, AGENT).is_fallback is (route.source == "agent-fallback")
