"""Where a gateway keeps its files (SPEC 2). Path arithmetic, `ensure()`, and reading the token
(the CLI's client and the server both need it; this module stays cheap to import)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from trio_gateway.errors import ConfigError


# A NamedTuple, not an attrs class: every CLI command imports this module, and importing attrs
# (with inspect) was the largest single cost of `trio-gateway gateway status` (bench_cli.py).
class Home(NamedTuple):
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
    def metrics_token_path(self) -> Path:
        """The read-only token for `GET /metrics` (SPEC 5): opens nothing else."""
        return self.root / "metrics.token"

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
    def usage_path(self) -> Path:
        """Today's tokens per agent (`agents.*.maxTokensPerDay` across restarts)."""
        return self.root / "usage.json"

    @property
    def inbound_dir(self) -> Path:
        return self.root / "inbound"

    @property
    def access_dir(self) -> Path:
        """Approvals and pending pairing codes (SPEC 15): `access/<channel>/<accountId>.json`."""
        return self.root / "access"

    def ensure(self) -> Home:
        for d in (self.root, self.logs_dir, self.queue_dir, self.sessions_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self


# `secrets.token_urlsafe(32)` is 43 characters; anything much shorter is guessable.
_MIN_TOKEN_CHARS = 32


def read_token(path: Path) -> str | None:
    """The admin token in `path`, None when the file is missing or empty. A token file anyone
    else could read or swap (a symlink, group/world bits) or a short token is refused naming
    the fix."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            why = "is a symbolic link; replace it with the token file itself (mode 0600)"
            raise ConfigError(str(path), why) from None
        raise ConfigError(str(path), f"cannot read the token: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(str(path), "is not a regular file; delete it to have a new token made")
        if info.st_mode & 0o077:
            mode = f"{stat.S_IMODE(info.st_mode):04o}"
            raise ConfigError(str(path), f"is open to group or others (mode {mode}); run: chmod 600 {path}")
        data = f.read(4096)
    token = data.decode("utf-8", errors="replace").strip()
    if not token:
        return None
    if len(token) < _MIN_TOKEN_CHARS or not (token.isascii() and token.isprintable()) or " " in token:
        raise ConfigError(
            str(path),
            f"is not a usable token (need at least {_MIN_TOKEN_CHARS} printable ASCII characters without spaces); "
            "delete it and start the gateway on loopback to have a new one made",
        )
    return token


# A token made elsewhere (a container secret, a configuration manager): the gateway reads it
# (with the same checks as its own), never writes it.
TOKEN_FILE_ENV = "TRIO_GATEWAY_TOKEN_FILE"


def token_path(default: Path, env: Mapping[str, str]) -> Path:
    """Where the admin token is: `$TRIO_GATEWAY_TOKEN_FILE` when set, else the home's file."""
    named = env.get(TOKEN_FILE_ENV)
    return Path(named) if named else default
