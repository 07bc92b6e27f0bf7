"""Full-jitter backoff and the retry budget (pure)."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from trio_gateway.policy.backoff import RETRY_AFTER_CEILING_SECONDS, delay, exhausted

attempts = st.integers(min_value=1, max_value=200)
initials = st.floats(min_value=0.01, max_value=10)
maxima = st.floats(min_value=10, max_value=3600)
seeds = st.integers(min_value=0, max_value=2**32)


@given(attempts, initials, maxima, seeds)
def test_delay_stays_between_initial_and_maximum(attempt: int, initial: float, maximum: float, seed: int) -> None:
    d = delay(attempt, initial, maximum, random.Random(seed))
    assert initial <= d <= maximum


@given(attempts, initials, maxima)
def test_the_cap_grows_monotonically_until_the_maximum(attempt: int, initial: float, maximum: float) -> None:
    # With an rng that always draws the top of its range the delay is the cap itself.
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    this, following = delay(attempt, initial, maximum, Top()), delay(attempt + 1, initial, maximum, Top())
    assert this <= following <= maximum
    assert this == min(maximum, initial * 2.0**attempt) or this == maximum


@given(attempts, initials, maxima, seeds, st.floats(min_value=0.001, max_value=1e7))
def test_retry_after_is_a_floor(attempt: int, initial: float, maximum: float, seed: int, retry_after: float) -> None:
    d = delay(attempt, initial, maximum, random.Random(seed), retry_after)
    assert d >= min(retry_after, RETRY_AFTER_CEILING_SECONDS)
    assert d <= max(maximum, min(retry_after, RETRY_AFTER_CEILING_SECONDS))


def test_jitter_spreads_the_delays() -> None:
    rng = random.Random(7)
    draws = {round(delay(5, 1.0, 60.0, rng), 3) for _ in range(50)}
    assert len(draws) > 40
    assert all(1.0 <= d <= 32.0 for d in draws)


def test_budget_stops_at_max_attempts() -> None:
    args = {"elapsed": 0.0, "next_delay": 1.0, "max_attempts": 3, "max_total_seconds": 300.0}
    assert exhausted(attempts=2, **args) is None  # type: ignore[arg-type]
    reason = exhausted(attempts=3, **args)  # type: ignore[arg-type]
    assert reason is not None
    assert "maxAttempts=3" in reason


def test_budget_stops_when_the_next_attempt_would_pass_the_total() -> None:
    assert exhausted(attempts=1, elapsed=250.0, next_delay=49.0, max_attempts=20, max_total_seconds=300.0) is None
    reason = exhausted(attempts=1, elapsed=250.0, next_delay=51.0, max_attempts=20, max_total_seconds=300.0)
    assert reason is not None
    assert "maxTotalRetrySeconds=300" in reason


@given(st.integers(1, 50), st.floats(0, 1000), st.floats(0, 100))
def test_budget_is_monotone_in_attempts_and_time(n: int, elapsed: float, wait: float) -> None:
    def gives_up(a: int, e: float) -> bool:
        return exhausted(attempts=a, elapsed=e, next_delay=wait, max_attempts=20, max_total_seconds=300.0) is not None

    if gives_up(n, elapsed):
        assert gives_up(n + 1, elapsed)
        assert gives_up(n, elapsed + 1)
