"""Where a gateway keeps its files (SPEC 2). Path arithmetic, `ensure()`, and reading the token
(the CLI's client and the server both need it; this module stays cheap to import)."""

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

    def ensure(self) -> Home:
        for d in (self.root, self.logs_dir, self.queue_dir, self.sessions_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


def read_token(path: Path) -> str | None:
    """The admin token in `path`, None when the file is missing or empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return token or None


# A token made elsewhere (a container secret, a configuration manager): the gateway reads it,
# never writes it.
TOKEN_FILE_ENV = "TRIO_GATEWAY_TOKEN_FILE"


def token_path(default: Path, env: Mapping[str, str]) -> Path:
    """Where the admin token is: `$TRIO_GATEWAY_TOKEN_FILE` when set, else the home's file."""
    named = env.get(TOKEN_FILE_ENV)
    return Path(named) if named else default
