"""Who may talk to the gateway: the admin bearer token.

The token file is the only secret the gateway writes itself: created once with mode 0600 and
compared in constant time. (A webhook's signature is its platform's: each platform module
checks its own, asked by `http/inbound.py`.)
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from trio_gateway.errors import ConfigError, UnauthorizedError
from trio_gateway.storage.home import TOKEN_FILE_ENV, read_token, token_path

# --- the admin token ----------------------------------------------------------------------


def create_token(path: Path) -> str:
    """Write a fresh token with mode 0600. O_EXCL: two starts racing never overwrite one
    another's token (the loser reads the winner's)."""
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        existing = read_token(path)
        if existing is None:
            raise ConfigError(str(path), "exists but is empty; delete it to have a new token made") from None
        return existing
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    return token


def is_loopback(bind: str) -> bool:
    if bind == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(bind.strip("[]")).is_loopback
    return False


def token_for_start(path: Path, bind: str, env: Mapping[str, str] | None = None) -> str:
    """The token a starting gateway uses. On loopback it is created when missing; a gateway
    reachable from other hosts must never come up with a token nobody has seen yet, so a
    non-loopback bind without an existing token file is refused. A file named by
    `$TRIO_GATEWAY_TOKEN_FILE` must exist: it is someone else's to write."""
    named = token_path(path, env or {})
    existing = read_token(named)
    if existing is not None:
        return existing
    if named != path:
        raise ConfigError(TOKEN_FILE_ENV, f"{named} does not exist or is empty")
    if not is_loopback(bind):
        raise ConfigError(
            "gateway.bind",
            f"{bind} is not a loopback address and {path} does not exist; start once on 127.0.0.1 "
            "to create the token (or create it yourself, mode 0600) before exposing the gateway",
        )
    return create_token(path)


def check_bearer(headers: Mapping[str, str], token: str) -> None:
    value = headers.get("authorization", "")
    scheme, _, given = value.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <gateway.token>)")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise UnauthorizedError("wrong bearer token")
