"""When to try a delivery again, and when to stop trying (SPEC 7). Pure: no I/O, no clock.

Full jitter (the AWS architecture blog's "exponential backoff and jitter"): the k-th wait is
uniform between the initial backoff and min(maximum, initial * 2**k), so a burst of failures
spreads out instead of retrying in lock step. A channel's `Retry-After` is a floor: we never
come back sooner than asked. The budget is two bounds, attempts and total time since the
budget started; an entry that would break either goes to `failed/` instead of waiting.
"""

from __future__ import annotations

import random

# A Retry-After longer than a day is nonsense (or an attack on our scheduler); the total retry
# budget dead-letters such an entry anyway, this only keeps the arithmetic finite.
RETRY_AFTER_CEILING_SECONDS = 86_400.0


def delay(attempt: int, initial: float, maximum: float, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait after the `attempt`-th failed attempt (1-based)."""
    exponent = min(max(attempt, 1), 64)  # 2**64 * initial already exceeds any sane maximum
    cap = max(initial, min(maximum, initial * 2.0**exponent))
    wait = rng.uniform(initial, cap)
    if retry_after is not None and retry_after > 0:
        wait = max(wait, min(retry_after, RETRY_AFTER_CEILING_SECONDS))
    return wait


def exhausted(
    *, attempts: int, elapsed: float, next_delay: float, max_attempts: int, max_total_seconds: float
) -> str | None:
    """Why the entry must be dead-lettered instead of retried, or None to retry.

    `attempts` counts the attempts made so far (the failed one included); `elapsed` is the
    seconds since the budget started (`createdAt`, or the operator's last `delivery retry`).
    """
    if attempts >= max_attempts:
        return f"gave up after {attempts} attempt(s) (maxAttempts={max_attempts})"
    if elapsed + next_delay > max_total_seconds:
        return (
            f"next attempt in {next_delay:.1f}s would pass the retry budget "
            f"(maxTotalRetrySeconds={max_total_seconds:g}, {elapsed:.1f}s spent)"
        )
    return None
