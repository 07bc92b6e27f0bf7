"""Reading `gateway.json` (SPEC 3): the file's JSON object, then the strict parse.

The runtime (`gateway.py` reloads it at every restart, `process.py` at start) and the CLI's
`config` commands share this; it lives outside the CLI so the gateway never imports the CLI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trio_gateway import config as cfg
from trio_gateway.errors import ConfigError


def read_raw(path: Path) -> dict[str, Any]:
    """The file's JSON object, `{}` when there is no file (the built-in defaults)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "expected a JSON object at the top level")
    return raw


def load(path: Path) -> cfg.Config:
    return cfg.parse(read_raw(path))
