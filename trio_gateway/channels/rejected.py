"""Poison messages (issue 25): a message a listener heard that can never become a turn is set
aside here, under `inbound/<channel>/<accountId>/rejected/`, for a person to read, and the
listener moves on. One bad message must never block its account, nor the good one beside it.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import attrs

from trio_gateway.channels.inbound import Heard, ListenError
from trio_gateway.log import EventLog
from trio_gateway.policy import strict_json
from trio_gateway.storage.atomic import BlockingRunner, atomic_create_bytes


@attrs.define
class RejectedStore:
    """`inbound/<channel>/<accountId>/rejected/<ms>-<hash of the message id>.json`: each message
    a listener could not accept, kept for a person to read (never deleted), JSON with every
    non-ASCII character escaped, so even a lone surrogate is written as the platform sent it."""

    root: Path
    runner: BlockingRunner
    log: EventLog

    async def set_aside(self, channel: str, account_id: str, heard: Heard, reason: str) -> None:
        """Written, then logged. Raises `ListenError` when it cannot be written: the cursor
        stays, and the message is read (and set aside) again."""
        try:
            path = await self._write(channel, account_id, heard, reason)
        except OSError as exc:
            raise ListenError(f"could not set a rejected message aside: {exc}") from None
        self.log.error(
            "CHANNEL", f"Rejected message channel={channel} account={account_id}: {reason[:200]}", file=str(path)
        )

    async def _write(self, channel: str, account_id: str, heard: Heard, reason: str) -> Path:
        record = {
            "channel": channel,
            "accountId": account_id,
            "id": heard.id,
            "to": heard.to,
            "text": heard.text,
            "contextToken": heard.context_token,
            "reason": reason,
            "rejectedAt": time.time(),
        }
        data = json.dumps(record, indent=2, ensure_ascii=True).encode() + b"\n"
        digest = hashlib.sha256((heard.id or heard.text).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        path = self.root / channel / account_id / "rejected" / f"{time.time_ns() // 1_000_000}-{digest}.json"
        await self.runner(lambda: atomic_create_bytes(path, data))
        return path


def poison(heard: Heard) -> str | None:
    """Why `heard` can never become a turn, or None: the HTTP API's rule for text (valid
    Unicode; a lone surrogate breaks every later write of it), applied to every field."""
    for name, value in (
        ("text", heard.text),
        ("sender", heard.to),
        ("id", heard.id),
        ("context token", heard.context_token),
    ):
        problem = strict_json.bad_text(value) if value is not None else None
        if problem is not None:
            return f"{name}: {problem}"
    return None
