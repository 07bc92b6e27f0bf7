"""The test endpoint's stalled model call (`POST /internal/test/stall-model-call`), armed at the
model seam: nothing of it is in a turn, a session file or the agent loop.

The endpoint arms a stall for a session, in memory; that session's next model call is made
through a model that sleeps before it calls the real one, inside the call's unit and cancel
scope, so it looks to the stall watchdog and the drain exactly like a silent upstream. One set
per generation: a turn resumed in the next generation runs without it, as before.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from trio_gateway.models.base import Message, Model, ModelReply, Progress


@attrs.define
class ModelStalls:
    _armed: dict[str, float] = attrs.Factory(dict)

    def arm(self, session_id: str, seconds: float) -> None:
        self._armed[session_id] = seconds

    def disarm(self, session_id: str) -> None:
        self._armed.pop(session_id, None)

    def model_for(self, session_id: str, model: Model) -> Model:
        """`model`, or a stalling wrapper around it when a stall is armed for the session (the
        stall is then used up: one model call stalls, not every call of the turn)."""
        seconds = self._armed.pop(session_id, None)
        return model if seconds is None else _Stalled(model, seconds)


@attrs.frozen
class _Stalled:
    inner: Model
    seconds: float

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        # In flight, no progress: what a silent upstream looks like.
        await trio.sleep(self.seconds)
        return await self.inner.complete(messages, tools, progress)

    async def aclose(self) -> None:
        """The real model is closed by its generation, not by a call's wrapper."""
