"""Where a delivery goes (SPEC 7): the one routing rule of the gateway. Pure.

The rule: the requester origin's `channel`, else its `deliveryChannel`, else the agent's first
bound channel (with a warning: that fallback is how the seed's WeChat notice reached Feishu).
The address and account always come from the same origin as the channel; fields are never
mixed across channels.
"""

from __future__ import annotations

import attrs

from trio_gateway.policy.config import AgentConfig
from trio_gateway.policy.origin import Origin


@attrs.frozen
class Route:
    channel: str
    to: str | None
    account_id: str | None
    # Why this channel: "origin", "origin.deliveryChannel" or "agent-fallback".
    source: str

    @property
    def is_fallback(self) -> bool:
        return self.source == "agent-fallback"


def resolve(origin: Origin | None, agent: AgentConfig) -> Route:
    if origin is not None and origin.channel:
        return Route(origin.channel, origin.to, origin.account_id or agent.account_id, "origin")
    if origin is not None and origin.delivery_channel:
        return Route(
            origin.delivery_channel, origin.to, origin.account_id or agent.account_id, "origin.deliveryChannel"
        )
    # No origin at all (an internal notice): the agent's first bound channel. The address is
    # the origin's if it had one, never borrowed from another channel's configuration.
    to = origin.to if origin is not None else None
    return Route(agent.channels[0], to, agent.account_id, "agent-fallback")
