"""Wall-clock time that follows trio's clock, so a MockClock run moves dates too.

Files carry wall-clock datetimes (`createdAt`, `nextAttemptAt`) because they outlive the
process; the runtime sleeps on trio's clock. `WallClock` ties the two at one instant: under
a MockClock, a backoff of 60 s passes in virtual time and the entry's dates agree with it.
"""

from __future__ import annotations

import datetime as dt

import attrs
import trio


@attrs.frozen
class WallClock:
    base_wall: dt.datetime
    base_trio: float

    @classmethod
    def start(cls, base_wall: dt.datetime | None = None) -> WallClock:
        """Call inside trio. `base_wall` pins the date (scenarios); default: now."""
        return cls(base_wall or dt.datetime.now(dt.UTC), trio.current_time())

    def now(self) -> dt.datetime:
        return self.base_wall + dt.timedelta(seconds=trio.current_time() - self.base_trio)

    def trio_time(self, when: dt.datetime) -> float:
        """The trio clock reading at which wall time `when` arrives (for `trio.sleep_until`)."""
        return self.base_trio + (when - self.base_wall).total_seconds()
