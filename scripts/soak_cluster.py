"""The cluster chaos soak (issue 23, SPEC 12): three gateway processes on one PostgreSQL, turns from
HTTP and from a fake WeChat account, while a seeded schedule SIGKILLs, SIGSTOPs/SIGCONTs and
restarts nodes and restarts PostgreSQL; then an independent checker reads what the fake received.

    .venv/bin/python scripts/soak_cluster.py [--seed S | --seeds N] [--turns 2000] [--conversations 200]
                                             [--traffic-seconds 90] [--quick]

Prints the seed and the fault schedule first (replay a failure with `--seed S`), then the counts
and every broken invariant. Exit status 1 when any seed failed. How it runs and what it checks:
`trio_gateway/sim/soak.py` and `trio_gateway/sim/chaos.py`.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from trio_gateway.sim.soak import Settings, run_soak


def run_one(settings: Settings) -> bool:
    t0 = time.monotonic()
    verdict = trio.run(run_soak, settings)
    print(f"seed {settings.seed}: {'PASSED' if verdict.ok else 'FAILED'} in {time.monotonic() - t0:.0f}s")
    for name, value in verdict.counts.items():
        print(f"  {name:<36} {value}")
    for failure in verdict.failures[:50]:
        print(f"  BROKEN: {failure}")
    if len(verdict.failures) > 50:
        print(f"  ... and {len(verdict.failures) - 50} more")
    return verdict.ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="replay this seed (default: a random one)")
    parser.add_argument("--seeds", type=int, default=1, help="run this many consecutive seeds from --seed")
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--conversations", type=int, default=200)
    parser.add_argument("--traffic-seconds", type=float, default=90.0)
    parser.add_argument("--quick", action="store_true", help="200 turns over 20 conversations, 30 s of traffic")
    args = parser.parse_args()
    if args.quick:
        args.turns, args.conversations, args.traffic_seconds = 200, 20, 30.0
    first = args.seed if args.seed is not None else random.randrange(1, 1_000_000)
    results = {}
    for seed in range(first, first + args.seeds):
        work = Path(tempfile.mkdtemp(prefix=f"soak-{seed}-"))
        settings = Settings(seed, work, args.turns, args.conversations, traffic_seconds=args.traffic_seconds)
        try:
            results[seed] = run_one(settings)
        finally:
            if results.get(seed):
                shutil.rmtree(work, ignore_errors=True)
            else:
                print(f"  the nodes' homes (logs) are kept in {work}")
    print("seeds: " + ", ".join(f"{s} {'ok' if ok else 'FAILED'}" for s, ok in results.items()))
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
