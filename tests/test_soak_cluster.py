"""The cluster chaos soak at a small size, one seed (issue 23; `scripts/soak_cluster.py` runs the
full size and many seeds): three real gateways on their own PostgreSQL, faults from the seeded
schedule, the independent checker's verdict. Marked `soak`: deselected by default (it takes a
minute or more on a loaded two-core machine); run it with `-m soak`."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from trio_gateway.sim.postgres import missing_reason
from trio_gateway.sim.soak import Settings, run_soak

pytestmark = [pytest.mark.soak, pytest.mark.e2e, pytest.mark.postgres]


@pytest.mark.timeout(600)
def test_a_small_chaos_soak_keeps_every_invariant(tmp_path: Path) -> None:
    reason = missing_reason()
    if reason is not None:
        pytest.skip(reason)
    said: list[str] = []
    settings = Settings(seed=23, work=tmp_path, turns=60, conversations=6, traffic_seconds=15, settle_seconds=120)
    verdict = trio.run(run_soak, settings, said.append)
    report = "\n".join([*said, *(f"{k}: {v}" for k, v in verdict.counts.items()), *verdict.failures])
    assert verdict.failures == [], report
    assert verdict.counts["accepted"] == verdict.counts["answered"] >= 60
    assert verdict.counts["faults"] >= 3, report
