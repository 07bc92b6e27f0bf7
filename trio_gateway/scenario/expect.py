"""What a scenario run observed, and the `[[expect]]` checks judged against it (SPEC 9).

Times are scenario seconds (0 = generation 1 accepting work). Deliveries are the worker's
sends through the real adapters with their classified outcome; requests are what reached the
fake channel servers over HTTP (`console` has no server: its requests are its sends).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import attrs

from trio_gateway.log import Event
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.sim.fake_channels import FakeRequest
from trio_gateway.sim.harness import Attempt
from trio_gateway.work.drain import DrainReport


@attrs.define
class RestartRecord:
    kind: str
    force: bool
    requested_at: float  # scenario seconds
    done_at: float | None = None
    generation: int | None = None


@attrs.frozen
class Observation:
    events: list[Event]
    t0: float
    attempts: list[Attempt]  # trio time
    requests: list[FakeRequest]  # trio time
    dead_letters: list[DeliveryEntry]
    restarts: list[RestartRecord]
    drains: list[DrainReport]
    generation: int

    def at(self, event: Event) -> float:
        return (event.clock if event.clock is not None else self.t0) - self.t0

    def requests_to(self, channel: str) -> list[tuple[float, str]]:
        """(scenario seconds, what) of every request that reached `channel`'s server."""
        if channel == "console":
            return [(a.at - self.t0, f"send to {a.to}") for a in self.attempts if a.channel == channel]
        return [
            (r.at - self.t0, f"{r.method} {r.path}")
            for r in self.requests
            if r.channel == channel and r.op not in _LISTENING_OPS
        ]


Check = tuple[bool, str]
# A listener's own calls (long polls, websocket endpoints): not requests a delivery made.
_LISTENING_OPS = ("poll", "notifystart", "notifystop", "gateway", "connect", "endpoint")


def _by(limit: float | None) -> str:
    return "" if limit is None else f" by {limit:g}s"


def _within(at: float, limit: float | None) -> bool:
    return limit is None or at <= limit + 1e-9


@attrs.frozen
class LogExpect:
    tag: str
    contains: str | None = None
    by: float | None = None
    count: int | None = None  # exactly this many; default: at least one

    def describe(self) -> str:
        what = f"[{self.tag}]" + (f" {self.contains!r}" if self.contains else "")
        many = "" if self.count is None else f" exactly {self.count} time(s)"
        return f"log {what}{many}{_by(self.by)}"

    def check(self, obs: Observation) -> Check:
        hits = [
            e
            for e in obs.events
            if e.tag == self.tag
            # The line's fields too (`from=claude to=backup`), as an operator reads it.
            and (self.contains is None or self.contains in e.text())
            and _within(obs.at(e), self.by)
        ]
        first = f"first at {obs.at(hits[0]):.3f}s" if hits else "none seen"
        if self.count is not None:
            return len(hits) == self.count, f"seen {len(hits)} time(s); {first}"
        return bool(hits), first


@attrs.frozen
class DeliveryExpect:
    """A send the channel accepted (its real adapter classified the answer `ok`)."""

    channel: str
    to: str | None = None
    kind: str | None = None
    by: float | None = None
    # Optional: the text contains this; the entry carried this reply context (WeChat
    # `contextToken`); exactly this many such sends were accepted (default: at least one).
    text: str | None = None
    context_token: str | None = None
    count: int | None = None

    def describe(self) -> str:
        to = f" to {self.to}" if self.to else ""
        kind = f" ({self.kind})" if self.kind else ""
        text = f" containing {self.text!r}" if self.text else ""
        ctx = f" with contextToken {self.context_token}" if self.context_token else ""
        many = "" if self.count is None else f" exactly {self.count} time(s)"
        return f"delivery{kind} on {self.channel}{to}{text}{ctx}{many}{_by(self.by)}"

    def check(self, obs: Observation) -> Check:
        hits = [
            a
            for a in obs.attempts
            if a.outcome == "ok"
            and a.channel == self.channel
            and (self.to is None or a.to == self.to)
            and (self.kind is None or a.kind == self.kind)
            and (self.text is None or self.text in a.text)
            and (self.context_token is None or a.context_token == self.context_token)
            and _within(a.at - obs.t0, self.by)
        ]
        if self.count is not None:
            first = f"; first at {hits[0].at - obs.t0:.3f}s" if hits else ""
            return len(hits) == self.count, f"{len(hits)} accepted{first}"
        if hits:
            return True, f"{len(hits)} accepted; first at {hits[0].at - obs.t0:.3f}s"
        seen = sorted({f"{a.channel}:{a.to}({a.kind},{a.outcome})" for a in obs.attempts})
        return False, f"none accepted; sends seen: {', '.join(seen[:10]) or 'none'}"


@attrs.frozen
class DeadLetterExpect:
    reason: str = ""
    channel: str | None = None
    count: int | None = None

    def describe(self) -> str:
        on = f" on {self.channel}" if self.channel else ""
        many = "" if self.count is None else f" x{self.count}"
        return f"dead letter{on} with reason containing {self.reason!r}{many}"

    def check(self, obs: Observation) -> Check:
        hits = [
            d
            for d in obs.dead_letters
            if self.reason in (d.failed_reason or "") and (self.channel is None or d.channel == self.channel)
        ]
        reasons = sorted({d.failed_reason or "" for d in obs.dead_letters})
        detail = f"{len(hits)} matching of {len(obs.dead_letters)}; reasons: {reasons[:3]}"
        return (len(hits) == self.count if self.count is not None else bool(hits)), detail


@attrs.frozen
class RestartWithin:
    """Every restart request saw its new generation accept work within `seconds`."""

    seconds: float

    def describe(self) -> str:
        return f"every restart completes within {self.seconds:g}s of its request"

    def check(self, obs: Observation) -> Check:
        restarts = [r for r in obs.restarts if r.kind == "restart"]
        if not restarts:
            return False, "no restart was requested"
        took = [(r.done_at - r.requested_at) if r.done_at is not None else None for r in restarts]
        shown = ", ".join("never" if t is None else f"{t:.3f}s" for t in took)
        ok = all(t is not None and t <= self.seconds + 1e-9 for t in took)
        return ok, f"took {shown}"


@attrs.frozen
class NoRequest:
    """Nothing reached the channel's server: not a send, not even a token fetch."""

    channel: str

    def describe(self) -> str:
        return f"no request to {self.channel}"

    def check(self, obs: Observation) -> Check:
        hits = obs.requests_to(self.channel)
        first = f", first {hits[0][1]} at {hits[0][0]:.3f}s" if hits else ""
        return not hits, f"{len(hits)} request(s){first}"


@attrs.frozen
class GenerationExpect:
    reached: int

    def describe(self) -> str:
        return f"generation {self.reached} reached"

    def check(self, obs: Observation) -> Check:
        return obs.generation >= self.reached, f"generation {obs.generation}"


@attrs.frozen
class DrainsExpect:
    count: int
    kind: Literal["restart", "stop"] | None = None

    def describe(self) -> str:
        return f"exactly {self.count} {self.kind or 'restart or stop'} drain(s)"

    def check(self, obs: Observation) -> Check:
        drains = [d for d in obs.drains if self.kind is None or d.kind == self.kind]
        return len(drains) == self.count, f"{len(drains)} drain(s)"


class Expectation(Protocol):
    def describe(self) -> str: ...

    def check(self, obs: Observation) -> Check: ...


EXPECT_TYPES: dict[str, type[Any]] = {
    "log": LogExpect,
    "delivery": DeliveryExpect,
    "dead_letter": DeadLetterExpect,
    "restart_within": RestartWithin,
    "no_request": NoRequest,
    "generation": GenerationExpect,
    "drains": DrainsExpect,
}
