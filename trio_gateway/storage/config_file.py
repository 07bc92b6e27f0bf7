"""Reading `gateway.json` (SPEC 3): the file's JSON object, then the strict parse.

The runtime (`gateway.py` reloads it at every restart, `process.py` at start) and the CLI's
`config` commands share this; it lives outside the CLI so the gateway never imports the CLI.
They read it through `channels.registry.load_config`, which hands in the channel kinds (their
names and account keys): this room sits below the channels and knows none of them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trio_gateway.errors import ConfigError
from trio_gateway.policy import config as cfg
from trio_gateway.policy import strict_json


def read_raw(path: Path) -> dict[str, Any]:
    """The file's JSON object, `{}` when there is no file (the built-in defaults)."""
    # Every way reading can fail is a ConfigError naming the file: a reload catches exactly
    # that and keeps the running config, so anything else here would kill a running gateway.
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    try:
        raw = strict_json.loads(data)
    except strict_json.JsonInputError as exc:
        raise ConfigError(f"{path}{' ' + exc.where if exc.where else ''}", exc.what) from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "expected a JSON object at the top level")
    return raw


def load(path: Path, kinds: Mapping[str, cfg.AccountKind] | None = None) -> cfg.Config:
    """The parsed file; `kinds`, the channel kinds this version speaks, as `policy.config.check` takes them."""
    return cfg.parse(read_raw(path), kinds)
