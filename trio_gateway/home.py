"""Where a gateway keeps its files (SPEC 2). Pure path arithmetic plus `ensure()`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs


@attrs.frozen
class Home:
    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None, env: Mapping[str, str] = os.environ) -> Home:
        """`--home DIR`, else `$TRIO_GATEWAY_HOME`, else `~/.trio-gateway`."""
        if explicit is not None:
            return cls(Path(explicit).expanduser())
        if env.get("TRIO_GATEWAY_HOME"):
            return cls(Path(env["TRIO_GATEWAY_HOME"]).expanduser())
        return cls(Path.home() / ".trio-gateway")

    @property
    def config_path(self) -> Path:
        return self.root / "gateway.json"

    @property
    def token_path(self) -> Path:
        return self.root / "gateway.token"

    @property
    def lock_path(self) -> Path:
        return self.root / "gateway.lock"

    @property
    def state_path(self) -> Path:
        return self.root / "gateway.state.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def log_path(self) -> Path:
        return self.logs_dir / "gateway.log"

    @property
    def console_path(self) -> Path:
        return self.logs_dir / "console.jsonl"

    @property
    def queue_dir(self) -> Path:
        return self.root / "delivery-queue"

    @property
    def sessions_dir(self) -> Path:
        return self.root / "sessions"

    @property
    def inbound_dir(self) -> Path:
        return self.root / "inbound"

    def ensure(self) -> Home:
        for d in (self.root, self.logs_dir, self.queue_dir, self.sessions_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self
