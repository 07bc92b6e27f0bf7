"""Where a delivery goes (SPEC 7): the one routing rule of the gateway. Pure.

The rule: the requester origin's `channel`, else its `deliveryChannel`, else the agent's first
bound channel (with a warning: that fallback is how the seed's WeChat notice reached Feishu).
The address and account always come from the same origin as the channel; fields are never
mixed across channels.
"""

from __future__ import annotations

import attrs

from trio_gateway.policy.config import AgentConfig, OriginConfig


@attrs.frozen
class Origin:
    """Who asked: the channel, address and account a turn came from. Carried unchanged
    through a turn, its tool calls and every nested subagent."""

    channel: str | None = None
    to: str | None = None
    account_id: str | None = None
    delivery_channel: str | None = None
    # The conversation's reply context where the platform needs one (WeChat's `context_token`,
    # sent back as `msg.context_token`): it changes per message, so it travels with the turn.
    context_token: str | None = None

    @classmethod
    def from_config(cls, origin: OriginConfig | None) -> Origin | None:
        if origin is None:
            return None
        return cls(origin.channel, origin.to, origin.account_id, origin.delivery_channel, origin.context_token)

    @property
    def conversation(self) -> Origin:
        """The origin without its per-message context: what names a session."""
        return self if self.context_token is None else attrs.evolve(self, context_token=None)


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
