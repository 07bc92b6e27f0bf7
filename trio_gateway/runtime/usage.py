"""What the models cost and how they fared (SPEC 16): tokens per session, per agent, per model
and per agent per UTC day (for `agents.*.maxTokensPerDay`), calls per model by outcome, and each
model's cool-down after a failure that another model answered instead.

One `ModelLedger` lives as long as the gateway, across generations, so a restart that reloads
the config neither forgets a cool-down nor hands an agent a fresh daily allowance. Counters are
kept in memory (the process's lifetime is what `/metrics` counters mean anyway); the day's spend
per agent is also handed to `save` (production: `storage/usage_file.py`), so a new process
starts from it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Mapping

import attrs

from trio_gateway.models.base import Usage

# SPEC 16: a failing model cools 30 s, doubling at each failure in a row, at most 10 min.
COOL_FIRST_SECONDS = 30.0
COOL_MAX_SECONDS = 600.0


@attrs.define
class Cooldown:
    until: float = 0.0
    strikes: int = 0


# (day, spend per agent) at the moment it is written.
DaySnapshot = Callable[[], tuple[dt.date, Mapping[str, int]]]


@attrs.define
class ModelLedger:
    by_session: dict[str, Usage] = attrs.Factory(dict)
    by_agent: dict[str, Usage] = attrs.Factory(dict)
    by_model: dict[str, Usage] = attrs.Factory(dict)
    # (agent, UTC date) -> tokens: the daily cap's count. Only today's entries are kept.
    by_agent_day: dict[tuple[str, dt.date], int] = attrs.Factory(dict)
    # (model, outcome) -> calls; outcome "ok" or the reason the call failed.
    calls: dict[tuple[str, str], int] = attrs.Factory(dict)
    cooldowns: dict[str, Cooldown] = attrs.Factory(dict)
    # Where the day's spend goes after each answered call; None: memory only (tests).
    save: Callable[[DaySnapshot], Awaitable[None]] | None = None

    @classmethod
    def resumed(
        cls, day: dt.date, spent: Mapping[str, int], save: Callable[[DaySnapshot], Awaitable[None]]
    ) -> ModelLedger:
        """A ledger that starts from the day's spend a previous process saved."""
        return cls(by_agent_day={(agent, day): n for agent, n in spent.items()}, save=save)

    async def persist(self, day: dt.date) -> None:
        """Hand the day's spend to `save` (after `record`)."""
        if self.save is not None:
            await self.save(lambda: (day, {a: n for (a, d), n in self.by_agent_day.items() if d == day}))

    def record(self, session: str, agent: str, model: str, usage: Usage, day: dt.date) -> None:
        """One answered call's tokens, added everywhere they are shown or capped."""
        for table, key in ((self.by_session, session), (self.by_agent, agent), (self.by_model, model)):
            table[key] = table.get(key, Usage()) + usage
        self._forget_before(day)
        self.by_agent_day[agent, day] = self.by_agent_day.get((agent, day), 0) + usage.total

    def count(self, model: str, outcome: str) -> None:
        self.calls[model, outcome] = self.calls.get((model, outcome), 0) + 1

    def spent_today(self, agent: str, day: dt.date) -> int:
        return self.by_agent_day.get((agent, day), 0)

    def _forget_before(self, day: dt.date) -> None:
        for key in [k for k in self.by_agent_day if k[1] < day]:
            del self.by_agent_day[key]

    # --- cool-downs --------------------------------------------------------------------------

    def cooling(self, model: str, now: float) -> bool:
        cooldown = self.cooldowns.get(model)
        return cooldown is not None and now < cooldown.until

    def cool(self, model: str, now: float, retry_after: float | None) -> float:
        """The model failed in a way another may answer: skip it for a while. Returns the
        seconds: 30 s doubling per failure in a row, at most 10 min, never shorter than the
        `retry-after` the upstream asked for (within the same cap)."""
        cooldown = self.cooldowns.setdefault(model, Cooldown())
        seconds: float = min(COOL_FIRST_SECONDS * 2.0 ** min(cooldown.strikes, 10), COOL_MAX_SECONDS)
        seconds = min(max(seconds, retry_after or 0.0), COOL_MAX_SECONDS)
        cooldown.strikes += 1
        cooldown.until = now + seconds
        return seconds

    def recovered(self, model: str) -> None:
        """An answer: the next failure starts the cool-down at 30 s again."""
        self.cooldowns.pop(model, None)
