"""What a channel's answer means for a delivery (SPEC 7): ok, retry, permanent, rate-limited,
or paused (the account must be fixed by a person first). Pure: each channel module maps its
platform's replies onto these with the helpers here; the worker acts only on `Outcome`."""

from __future__ import annotations

from typing import Literal

import attrs

OutcomeKind = Literal["ok", "retry", "permanent", "rate_limited", "paused"]


@attrs.frozen
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    # Seconds the channel asked us to wait (Retry-After / retry_after), when it said.
    retry_after: float | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


OK = Outcome("ok")
