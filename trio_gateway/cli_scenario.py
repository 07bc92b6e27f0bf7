"""`trio-gateway scenario ...` (SPEC 4). Placeholder until its issue lands."""

from __future__ import annotations

import argparse
from typing import Any


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser("scenario", help="scenario commands")
    parser.set_defaults(func=lambda args, ctx: 2)
