"""Who may talk to the gateway: the admin bearer token, and each channel's webhook signature.

The token file is the only secret the gateway writes itself: created once with mode 0600 and
compared in constant time. Webhook secrets are read from the environment variables that the
account's configuration names; their values never reach a log line, a status or an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import ipaddress
import os
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trio_gateway.errors import ConfigError, UnauthorizedError
from trio_gateway.policy.config import AccountConfig
from trio_gateway.storage.home import TOKEN_FILE_ENV, read_token, token_path

# Slack rejects signatures older than this to stop replays; so do we.
SLACK_REPLAY_WINDOW_SECONDS = 300.0


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


# --- inbound webhooks -----------------------------------------------------------------------


def _secret(env: Mapping[str, str], name: str | None, what: str) -> str:
    secret = env.get(name) if name else None
    if not secret:
        # The account cannot verify anything, so it accepts nothing.
        raise UnauthorizedError(f"{what} is not configured for this account; inbound events are refused")
    return secret


def check_slack_headers(
    headers: Mapping[str, str], account: AccountConfig, env: Mapping[str, str], now: Callable[[], float] = time.time
) -> tuple[str, str, str]:
    """What can be checked before the body arrives: a signing secret, a timestamp inside the
    replay window, a signature header. Returns (secret, timestamp, signature)."""
    secret = _secret(env, account.signing_secret_env, "signingSecretEnv")
    stamp = headers.get("x-slack-request-timestamp", "")
    given = headers.get("x-slack-signature", "")
    # Whole seconds, as Slack sends them: `float()` would take "nan", whose age compares
    # false with everything and so passed the window check.
    if not (stamp.isascii() and stamp.isdigit()) or len(stamp) > 12:
        raise UnauthorizedError("missing or bad X-Slack-Request-Timestamp (whole Unix seconds)")
    if abs(now() - int(stamp)) > SLACK_REPLAY_WINDOW_SECONDS:
        raise UnauthorizedError("X-Slack-Request-Timestamp is outside the 5-minute window")
    if not given.startswith("v0="):
        raise UnauthorizedError("missing or bad X-Slack-Signature")
    return secret, stamp, given


def verify_slack(
    headers: Mapping[str, str],
    body: bytes,
    account: AccountConfig,
    env: Mapping[str, str],
    now: Callable[[], float] = time.time,
) -> None:
    """Slack's v0 scheme: HMAC-SHA256 of `v0:<timestamp>:<body>` with the signing secret."""
    secret, stamp, given = check_slack_headers(headers, account, env, now)
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(given.encode(), f"v0={digest}".encode()):
        raise UnauthorizedError("bad X-Slack-Signature")


def verify_telegram(headers: Mapping[str, str], account: AccountConfig, env: Mapping[str, str]) -> None:
    secret = _secret(env, account.secret_token_env, "secretTokenEnv")
    given = headers.get("x-telegram-bot-api-secret-token", "")
    if not hmac.compare_digest(given.encode(), secret.encode()):
        raise UnauthorizedError("bad X-Telegram-Bot-Api-Secret-Token")


def check_feishu_configured(account: AccountConfig, env: Mapping[str, str]) -> None:
    """Feishu's token is in the body; before it arrives, only that we could check it."""
    _secret(env, account.verification_token_env, "verificationTokenEnv")


def verify_feishu(event: Mapping[str, Any], account: AccountConfig, env: Mapping[str, str]) -> None:
    """Feishu puts its verification token in the body: `token` (schema 1 and the URL
    challenge) or `header.token` (schema 2)."""
    secret = _secret(env, account.verification_token_env, "verificationTokenEnv")
    header = event.get("header")
    given = event.get("token") or (header.get("token") if isinstance(header, dict) else None)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        raise UnauthorizedError("bad Feishu verification token")
