"""What a channel's answer means for a delivery (SPEC 7): ok, retry, permanent, rate-limited,
or paused (the account must be fixed by a person first). Pure: each channel module maps its
platform's replies onto these with the helpers here; the worker acts only on `Outcome`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import attrs

OutcomeKind = Literal["ok", "retry", "permanent", "rate_limited", "paused"]


@attrs.frozen
class Outcome:
    kind: OutcomeKind
    reason: str = ""
    # Seconds the channel asked us to wait (Retry-After / retry_after), when it said.
    retry_after: float | None = None
    http_status: int | None = None

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


OK = Outcome("ok")


# --- shared rules -----------------------------------------------------------------------------
#
# Every classifier takes what one HTTP exchange gave back: the status, the parsed JSON body
# (None when it was not JSON) and the headers. Header names may come in any case.

Headers = Mapping[str, str]

# Longest reason we keep: enough for the platform's code and message, short enough for a log line.
MAX_REASON_CHARS = 200


def header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers.items():
        if key.lower() == wanted:
            return value
    return None


def seconds(value: object) -> float | None:
    """A non-negative number of seconds from a header or JSON field, or None when it is not one.
    HTTP-date Retry-After values are not used by the platforms we speak, so they count as absent."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, (int, float)):
            number = float(value)  # an int of 400 digits from a platform overflows here
        elif isinstance(value, str):
            number = float(value.strip())
        else:
            return None
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def retry_after(headers: Headers) -> float | None:
    return seconds(header(headers, "Retry-After"))


def short(reason: str) -> str:
    flat = " ".join(reason.split())
    return flat if len(flat) <= MAX_REASON_CHARS else flat[: MAX_REASON_CHARS - 1] + "…"


def field(body: object, name: str) -> object:
    return body.get(name) if isinstance(body, Mapping) else None


def by_status(status: int, headers: Headers, reason: str) -> Outcome:
    """What an HTTP status alone says, when the body named nothing more specific.

    401 means our credentials are bad: every message of that account would fail alike, so the
    account is paused for a person to fix instead of dead-lettering each message (SPEC 7 lists
    4xx as permanent; this is the one 4xx where that loses messages for nothing)."""
    if 200 <= status < 300:
        return Outcome("retry", reason, http_status=status)  # reached only for an unreadable 2xx
    if status == 429:
        return Outcome("rate_limited", reason, retry_after(headers), status)
    if status == 408:
        return Outcome("retry", reason, retry_after(headers), status)
    if status == 401:
        return Outcome("paused", reason, http_status=status)
    if 400 <= status < 500:
        return Outcome("permanent", reason, http_status=status)
    return Outcome("retry", reason, retry_after(headers), status)


def transport_error(kind: str, detail: str = "") -> Outcome:
    """A request that got no answer (connect refused, reset, timeout): always worth a retry."""
    return Outcome("retry", short(f"network error: {kind}" + (f": {detail}" if detail else "")))


def _prefix(status: int, channel: str, code: object, message: object) -> str:
    parts = [f"HTTP {status}"]
    if code not in (None, ""):
        parts.append(f"{channel}_code {code}")
    if isinstance(message, str) and message:
        parts.append(message)
    return short(" ".join(parts))


# --- feishu -----------------------------------------------------------------------------------

FEISHU_PERMANENT_CODES = frozenset(
    {
        99992360,  # invalid ids (no such user or chat)
        99992361,  # open_id cross app: the id belongs to another app
        230001,  # invalid request parameter
        230002,  # the bot is not in the chat
        230006,  # the bot ability is not enabled
        230013,  # the user is outside the bot's availability range
        230017,  # the bot is not the chat owner / the chat forbids bots
        230099,  # message content too long or malformed
    }
)
FEISHU_RATE_LIMIT_CODES = frozenset({11232, 230020, 99991400})
# The tenant token is invalid or missing: refetch it and send once more, the message is fine.
FEISHU_TOKEN_INVALID_CODES = frozenset({99991661, 99991663, 99991664, 99991668})


def feishu_rate_delay(headers: Headers) -> float | None:
    return retry_after(headers) or seconds(header(headers, "x-ogw-ratelimit-reset"))


def classify_feishu(status: int, body: object, headers: Headers) -> Outcome:
    """Feishu answers `{"code": 0, ...}` on success; a non-zero code is an error even with HTTP 200."""
    code = field(body, "code")
    reason = _prefix(status, "feishu", code, field(body, "msg"))
    if code == 0 and 200 <= status < 300:
        return OK
    if code in FEISHU_RATE_LIMIT_CODES or status == 429:
        return Outcome("rate_limited", reason, feishu_rate_delay(headers), status)
    if code in FEISHU_PERMANENT_CODES:
        return Outcome("permanent", reason, http_status=status)
    if code in FEISHU_TOKEN_INVALID_CODES:
        # Reached only when a freshly fetched token is refused too: likely a clock or platform
        # hiccup, so worth a later retry rather than a dead letter.
        return Outcome("retry", reason, http_status=status)
    if isinstance(code, int) and 200 <= status < 300:
        return Outcome("retry", reason, http_status=status)  # unknown code: bounded retries decide
    return by_status(status, headers, reason)


def classify_feishu_token(status: int, body: object, headers: Headers) -> Outcome:
    """The tenant-token endpoint: a refusal means the app id or secret is wrong, which a person
    must fix for the whole account (paused), not a reason to drop this one message."""
    code = field(body, "code")
    reason = "tenant token: " + _prefix(status, "feishu", code, field(body, "msg"))
    if code == 0 and 200 <= status < 300 and isinstance(field(body, "tenant_access_token"), str):
        return OK
    if code in FEISHU_RATE_LIMIT_CODES or status == 429:
        return Outcome("rate_limited", reason, feishu_rate_delay(headers), status)
    if status >= 500 or status == 408:
        return Outcome("retry", reason, retry_after(headers), status)
    if isinstance(code, int) and code != 0:
        return Outcome("paused", reason, http_status=status)
    return by_status(status, headers, reason) if status >= 300 else Outcome("retry", reason, http_status=status)


# --- openclaw-weixin --------------------------------------------------------------------------

WEIXIN_SESSION_EXPIRED = -14


def classify_weixin(status: int, body: object, headers: Headers) -> Outcome:
    """`{"ret": 0}` is success; `{"errcode": -14}` means the bot's session expired (a person must
    log in again), so the account is paused rather than each message failed."""
    errcode = field(body, "errcode")
    ret = field(body, "ret")
    code = errcode if errcode not in (None, 0) else ret
    reason = _prefix(status, "weixin", code, field(body, "errmsg"))
    if 200 <= status < 300 and isinstance(body, Mapping) and code in (None, 0):
        return OK
    if code == WEIXIN_SESSION_EXPIRED:
        return Outcome("paused", reason, http_status=status)
    if 200 <= status < 300 and isinstance(code, int):
        return Outcome("retry", reason, http_status=status)
    return by_status(status, headers, reason)


# --- slack ------------------------------------------------------------------------------------

SLACK_PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "msg_too_long",
        "no_text",
        "too_many_attachments",
        "invalid_arguments",
        "invalid_blocks",
        "restricted_action",
        "cannot_dm_bot",
        "user_not_found",
        "messages_tab_disabled",
    }
)
# Credentials or scopes are wrong: the same for every message of the account, so pause it.
SLACK_AUTH_ERRORS = frozenset(
    {"invalid_auth", "not_authed", "token_revoked", "token_expired", "account_inactive", "missing_scope"}
)


def classify_slack(status: int, body: object, headers: Headers) -> Outcome:
    """Slack answers HTTP 200 `{"ok": false, "error": "..."}` for almost every failure."""
    error = field(body, "error")
    reason = short(f"HTTP {status} slack_error {error}") if isinstance(error, str) else short(f"HTTP {status}")
    if field(body, "ok") is True and 200 <= status < 300:
        return OK
    if error == "ratelimited" or status == 429:
        return Outcome("rate_limited", reason, retry_after(headers), status)
    if error in SLACK_PERMANENT_ERRORS:
        return Outcome("permanent", reason, http_status=status)
    if error in SLACK_AUTH_ERRORS:
        return Outcome("paused", reason, http_status=status)
    if 200 <= status < 300:
        return Outcome("retry", reason, retry_after(headers), status)  # internal_error, fatal_error, unknown
    return by_status(status, headers, reason)


# --- discord ----------------------------------------------------------------------------------


def classify_discord(status: int, body: object, headers: Headers) -> Outcome:
    """Discord speaks in HTTP statuses; a 429 carries `retry_after` (seconds) in its JSON body."""
    if 200 <= status < 300 and isinstance(body, Mapping):
        return OK
    reason = _prefix(status, "discord", field(body, "code"), field(body, "message"))
    if status == 429:
        delay = seconds(field(body, "retry_after"))
        return Outcome("rate_limited", reason, delay if delay is not None else retry_after(headers), status)
    return by_status(status, headers, reason)


# --- telegram ---------------------------------------------------------------------------------


def classify_telegram(status: int, body: object, headers: Headers) -> Outcome:
    """`{"ok": true}` or `{"ok": false, "error_code", "description", "parameters": {"retry_after"}}`."""
    if field(body, "ok") is True and 200 <= status < 300:
        return OK
    code = field(body, "error_code")
    reason = _prefix(status, "telegram", code, field(body, "description"))
    parameters = field(body, "parameters")
    if code == 429 or status == 429:
        delay = seconds(field(parameters, "retry_after"))
        return Outcome("rate_limited", reason, delay if delay is not None else retry_after(headers), status)
    if field(parameters, "migrate_to_chat_id") is not None:
        return Outcome("permanent", short(f"{reason} (group moved to {field(parameters, 'migrate_to_chat_id')})"))
    effective = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else status
    if 200 <= effective < 300:
        return Outcome("retry", reason, http_status=status)
    return attrs.evolve(by_status(effective, headers, reason), http_status=status)
