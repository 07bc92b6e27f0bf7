"""A run's event log as a readable timeline in virtual seconds, repeats folded (SPEC 9)."""

from __future__ import annotations

import collections
import re

import attrs

from trio_gateway.log import Event


@attrs.frozen
class TimelineEntry:
    at: float
    level: str
    tag: str
    message: str
    repeated: int = 0  # further events just like this one, folded in
    until: float | None = None

    def line(self) -> str:
        tag = f"[{self.tag}] " if self.tag else ""
        text = f"{self.at:10.3f}s  {self.level:<5} {tag}{self.message}"
        if self.repeated:
            text += f"   (+{self.repeated} more like this until {self.until:.3f}s)"
        return text


_NUMBERS = re.compile(r"\S*\d\S*")


def _shape(event: Event) -> tuple[str, str]:
    return event.tag, _NUMBERS.sub("#", event.message)


def _describe_event(event: Event) -> str:
    kv = " ".join(f"{k}={v}" for k, v in event.fields.items() if k not in ("blockers",))
    return f"{event.message} {kv}".strip()[:240]


def timeline(events: list[Event], t0: float, *, keep: int = 3) -> list[TimelineEntry]:
    """Events in virtual seconds. Within a stretch of repeating events (a retry storm, 10,000
    sessions starting) each shape, numbers aside, shows its first `keep` events and folds the
    rest into a count on the last one shown. An event with a tag not seen in the stretch (a
    drain starting amid a retry storm) starts a new stretch."""
    out: list[TimelineEntry] = []
    seen: dict[tuple[str, str], int] = {}  # shape -> index in `out` of its last shown event
    shown: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in events:
        at = round((event.clock if event.clock is not None else t0) - t0, 6)
        shape = _shape(event)
        if shape not in seen and event.tag not in {tag for tag, _ in seen}:
            seen.clear()
            shown.clear()
        if shown[shape] < keep:
            shown[shape] += 1
            seen[shape] = len(out)
            out.append(TimelineEntry(at, event.level, event.tag, _describe_event(event)))
        else:
            i = seen[shape]
            out[i] = attrs.evolve(out[i], repeated=out[i].repeated + 1, until=at)
    return out
