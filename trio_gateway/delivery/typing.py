"""The typing indicator while a turn runs (SPEC 15, "Typing").

`TypingIndicators.during(origin)` wraps a turn: while it runs, the conversation's platform shows
its typing indicator, shown again every `ChannelKind.typing_every` seconds (Telegram 4 s, Discord
8 s, WeChat 5 s). Best effort: each call is bounded (`CALL_SECONDS`), its answer ignored, an error
logged at debug and never raised; the indicator stops when the turn ends (its cancel scope) and
at the start of a drain (`stop`), whichever comes first. The turn never waits for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import trio
from trio_util import AsyncValue, move_on_when

from trio_gateway.channels.base import Channel, ShowsTyping
from trio_gateway.channels.registry import kind_of
from trio_gateway.delivery.worker import ChannelLookup
from trio_gateway.log import EventLog
from trio_gateway.policy.origin import Origin

# Each call's bound: a platform slow to answer a typing call must not hold anything up.
CALL_SECONDS = 2.0

Lookup = Callable[[str, str | None], Channel | None]


@attrs.frozen
class _Target:
    adapter: ShowsTyping
    to: str
    context_token: str | None
    every: float


@attrs.define
class TypingIndicators:
    """One generation's typing indicators: the account adapters to call, and the drain's stop."""

    channels: Lookup
    log: EventLog
    # The gateway's state (its values are the gateway's `State`): the indicators stop for good
    # the moment it reads "draining", at the drain request, though turns may still run.
    gateway_state: AsyncValue[Any] | None = None
    _stopped: trio.Event = attrs.Factory(trio.Event)

    @classmethod
    def through(
        cls, channels: ChannelLookup | None, log: EventLog, gateway_state: AsyncValue[Any] | None = None
    ) -> TypingIndicators | None:
        """Indicators through a generation's channel adapters, when its delivery side has them
        (the queue's and the cluster's do; a recording stand-in has none: no indicator)."""
        return cls(channels.get, log, gateway_state) if channels is not None else None

    def stop(self) -> None:
        """A drain starts: every indicator stops now, though turns may still run."""
        self._stopped.set()

    def _stopping(self) -> bool:
        if self.gateway_state is not None and self.gateway_state.value == "draining":
            self._stopped.set()
        return self._stopped.is_set()

    async def _until_stopped(self) -> None:
        if self.gateway_state is not None:
            async with move_on_when(self._stopped.wait):
                await self.gateway_state.wait_value("draining")
            self._stopped.set()
        await self._stopped.wait()

    @contextlib.asynccontextmanager
    async def during(self, origin: Origin | None) -> AsyncIterator[None]:
        """Show typing in `origin`'s conversation until the block ends (or a drain starts)."""
        target = self._target(origin)
        if target is None or self._stopping():
            yield
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._show, target)
            try:
                yield
            finally:
                nursery.cancel_scope.cancel(reason="the turn ended")

    def _target(self, origin: Origin | None) -> _Target | None:
        if origin is None or origin.channel is None or not origin.to:
            return None
        kind = kind_of(origin.channel)
        every = kind.typing_every if kind is not None else None
        adapter = self.channels(origin.channel, origin.account_id)
        if every is None or not isinstance(adapter, ShowsTyping):
            return None
        return _Target(adapter, origin.to, origin.context_token, every)

    async def _show(self, target: _Target) -> None:
        # A drain's start cuts even a call in flight: nothing of a turn shows after it.
        async with move_on_when(self._until_stopped):
            while True:
                with trio.move_on_after(CALL_SECONDS):
                    try:
                        await target.adapter.show_typing(target.to, target.context_token)
                    except Exception as exc:  # best effort: a typing call never fails a turn
                        self.log.debug("TYPING", "Typing indicator call failed", to=target.to, error=repr(exc))
                await trio.sleep(target.every)
