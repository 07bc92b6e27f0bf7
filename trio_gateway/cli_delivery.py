"""`trio-gateway delivery ...` (SPEC 4). Placeholder until its issue lands."""

from __future__ import annotations

import argparse
from typing import Any


def register(groups: Any) -> None:
    parser: argparse.ArgumentParser = groups.add_parser("delivery", help="delivery commands")
    parser.set_defaults(func=lambda args, ctx: 2)
