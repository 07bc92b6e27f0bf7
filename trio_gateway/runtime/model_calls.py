"""One model call of a turn, as SPEC 16 has it: the agent's model, then its `fallbacks`.

Each try is its own `model_call` unit (its own cancel scope, its own stall verdict). A try that
fails with a rate limit, an overload, a 5xx, a connection failure or a timeout, or that the
stall watchdog aborts, is tried again on the next model of the chain that is not cooling down;
the failing model cools (`usage.ModelLedger.cool`). A drain's cancellation is not a failure: it
leaves through every try untouched, so a drain never fails over. Any other refusal (a 400, a bad
key) ends the turn: another model would be refused the same way.

Before each try the history is trimmed to that model's context budget (`policy.context`), and
after an answer its tokens are added to the ledger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import trio

from trio_gateway.errors import ModelCallError, WorkAbortedError
from trio_gateway.log import EventLog
from trio_gateway.models.base import Message, Model, ModelReply
from trio_gateway.policy import context
from trio_gateway.policy.config import Config
from trio_gateway.runtime.usage import ModelLedger
from trio_gateway.work.units import WorkRegistry, WorkUnit


class Seams(Protocol):
    """What a model call needs from its generation (`agent.Runtime` has it all)."""

    @property
    def config(self) -> Config: ...
    def model(self, name: str, session_id: str) -> Model:
        """The model a session's next call goes to (the test endpoint's stall seam)."""
        ...

    @property
    def registry(self) -> WorkRegistry: ...
    @property
    def ledger(self) -> ModelLedger: ...
    @property
    def log(self) -> EventLog: ...
    @property
    def wall(self) -> Callable[[], dt.datetime]: ...


@attrs.frozen
class Call:
    """One model call of a turn: whose it is and what it says."""

    session_id: str
    agent_id: str
    messages: list[Message]
    tools: list[dict[str, Any]]
    parent: WorkUnit | None = None


# SPEC 16: 429 and 529 are retryable. When no other model is left to fail over to, the same
# model is asked again after the `retry-after` it sent (else 1 s, then 2 s), at most this many
# times and never after a wait longer than the bound: a turn does not sit out a long rate limit.
RETRIES_WHEN_ALONE = 2
MAX_RETRY_WAIT_SECONDS = 30.0
_RETRYABLE = ("rate_limited", "overloaded")


class _FailOver(Exception):
    """A try failed in a way the next model may answer."""

    def __init__(self, error: Exception, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason
        self.retry_after = retry_after


def chain_of(config: Config, model: str) -> list[str]:
    """The models a call may try, in order: the agent's, then its `fallbacks`."""
    return [model, *config.models[model].fallbacks]


async def complete(rt: Seams, call: Call) -> ModelReply:
    """The first answer along the agent's chain of models; raises the last try's error."""
    chain = chain_of(rt.config, rt.config.agents[call.agent_id].model)
    name = _ready_after(rt, chain, -1) or chain[0]  # all cooling: the agent's own, not nothing
    retries = 0
    while True:
        try:
            return await _try(rt, name, call)
        except _FailOver as failed:
            following = _ready_after(rt, chain, chain.index(name))
            if following is not None:
                fields = {"from": name, "to": following, "reason": failed.reason, "sessionId": call.session_id}
                rt.log.warn("MODEL", "Failover", **fields)
                name = following
                continue
            wait = _retry_wait(failed, retries)
            if wait is None:
                raise failed.error from None
            retries += 1
            rt.log.info("MODEL", "Retrying", model=name, inSeconds=round(wait, 3), reason=failed.reason)
            # A wait, not a call: no unit, no stall verdict; a drain cancels it like any wait.
            await trio.sleep(wait)


def _retry_wait(failed: _FailOver, retries: int) -> float | None:
    """How long to wait before asking the same model again, or None to give up."""
    if failed.reason not in _RETRYABLE or retries >= RETRIES_WHEN_ALONE:
        return None
    wait = failed.retry_after if failed.retry_after is not None else 2.0**retries
    return wait if wait <= MAX_RETRY_WAIT_SECONDS else None


def _ready_after(rt: Seams, chain: list[str], index: int) -> str | None:
    """The next model of the chain after `index` that is not cooling down."""
    now = trio.current_time()
    return next((m for m in chain[index + 1 :] if not rt.ledger.cooling(m, now)), None)


async def _try(rt: Seams, name: str, call: Call) -> ModelReply:
    config = rt.config.models[name]
    prompt = context.fit(call.messages, context.budget(config.context_tokens, config.max_tokens), call.tools)
    unit: WorkUnit | None = None
    try:
        with rt.registry.track("model_call", call.session_id, call.parent) as unit:
            reply = await rt.model(name, call.session_id).complete(prompt, call.tools, unit.progress)
    except ModelCallError as exc:
        rt.ledger.count(name, exc.failover or "error")
        named = _naming(exc, name)
        if exc.failover is None:
            raise named from None
        _cool(rt, name, exc.retry_after)
        raise _FailOver(named, exc.failover, exc.retry_after) from None
    except WorkAbortedError as exc:
        # Only the watchdog's abort fails over; an operator's abort of the session ends the turn.
        stalled = unit is not None and unit.stall_reported
        rt.ledger.count(name, "stalled" if stalled else "aborted")
        if not stalled:
            raise
        _cool(rt, name, None)
        raise _FailOver(exc, "stalled") from None
    rt.ledger.count(name, "ok")
    rt.ledger.recovered(name)
    day = rt.wall().date()
    rt.ledger.record(call.session_id, call.agent_id, name, reply.usage, day)
    await rt.ledger.persist(day)
    return reply


def _naming(exc: ModelCallError, name: str) -> ModelCallError:
    """The same error, saying which model of the chain gave it: with fallbacks, "model upstream
    answered HTTP 400" alone leaves the operator guessing which upstream."""
    return ModelCallError(f"{exc} (model {name})", failover=exc.failover, retry_after=exc.retry_after)


def _cool(rt: Seams, name: str, retry_after: float | None) -> None:
    seconds = rt.ledger.cool(name, trio.current_time(), retry_after)
    rt.log.info("MODEL", "Cooling down", model=name, seconds=round(seconds))


def over_daily_cap(rt: Seams, agent_id: str) -> str | None:
    """Why a new turn of this agent is refused today (`maxTokensPerDay`), or None."""
    agent = rt.config.agents.get(agent_id)
    if agent is None or agent.max_tokens_per_day is None:
        return None
    spent = rt.ledger.spent_today(agent_id, rt.wall().date())
    if spent < agent.max_tokens_per_day:
        return None
    return (
        f"agent {agent_id} has used its {agent.max_tokens_per_day} tokens for today (UTC); "
        "it takes new requests again after 00:00 UTC"
    )
