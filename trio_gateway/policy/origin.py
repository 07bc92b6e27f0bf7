"""Who asked (SPEC 6, 7): the one origin record of the gateway. Pure data.

One class for every place an origin is written or read: a cron entry's `origin` in
`gateway.json`, a session's and a turn's `origin` in its session file (or PostgreSQL row), a
delivery entry's `requesterOrigin`, and the routing rule. It has a module of its own because
both the config schema and the routing rule need it, and routing reads the config's agents: in
either of them it would make the two import each other.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Origin:
    """The channel, address and account a turn came from. Carried unchanged through a turn,
    its tool calls, every nested subagent and the deliveries they enqueue."""

    channel: str | None = None
    to: str | None = None
    account_id: str | None = None
    delivery_channel: str | None = None
    # The conversation's reply context where the platform needs one (WeChat's `context_token`,
    # sent back as `msg.context_token`): it changes per message, so it travels with the turn.
    context_token: str | None = None
    # The platform's thread the conversation sits in (Slack `thread_ts`, Telegram
    # `message_thread_id`): replies and notices go back into it. Part of the conversation: two
    # threads of one group are two conversations.
    thread: str | None = attrs.field(default=None, metadata={"omit_if_default": True})

    @property
    def conversation(self) -> Origin:
        """The origin without its per-message context: what names a session."""
        return self if self.context_token is None else attrs.evolve(self, context_token=None)
