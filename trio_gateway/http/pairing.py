"""Who may talk to the agent, over HTTP (SPEC 15 "Access"; admin token, like every /v1 route):

- `GET /v1/pairing[?channel=C]`: `{"pending": [...], "approvals": [...]}`, live codes oldest first;
- `POST /v1/pairing/approve {"channel", "code"}`: 200 `{"approval": {...}}`; 404 when the code is
  unknown, expired or approved already;
- `POST /v1/pairing/revoke {"channel", "accountId", "sender"}`: 200 `{"revoked": true}`; 404
  when that sender had no approval.

An unknown channel is a 400 naming the known ones (a typo must not read as "no such code"). The
book is the gateway's (`GatewayDeps.pairing`): files, or the database in cluster mode, so an
approval counts with the sender's next message, on every node.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from typing import Any

import trio

from trio_gateway.channels.registry import NAMES as CHANNEL_NAMES
from trio_gateway.errors import BadRequestError, GatewayError, NotFoundError
from trio_gateway.http.base import Request, Response, Route, json_response
from trio_gateway.http.body import req_str
from trio_gateway.policy import codec
from trio_gateway.policy.pairing import Approval, PairingBook
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.storage.access import check_name

# Each field names a file or a row: long values are not ids of any platform.
_MAX_FIELD = 256


def check_channel(channel: str) -> str:
    if channel not in CHANNEL_NAMES:
        raise BadRequestError(f"channel: {channel[:40]!r} is not a channel (known: {', '.join(sorted(CHANNEL_NAMES))})")
    return channel


async def listing(book: PairingBook, channel: str | None, now: dt.datetime) -> dict[str, Any]:
    """What `GET /v1/pairing` answers and `pairing list --json` prints (with or without a gateway)."""
    if channel is not None:
        check_channel(channel)
    pending = await book.pending(channel, now)
    approvals = await book.approvals(channel)
    # The codec writes them as every record the API shows: camelCase keys, ISO 8601 times.
    return {"pending": codec.unstructure(pending), "approvals": codec.unstructure(approvals)}


async def approve(book: PairingBook, channel: str, code: str, now: dt.datetime) -> Approval:
    return await book.approve(check_channel(channel), code, now)


async def revoke(book: PairingBook, channel: str, account_id: str, sender: str) -> None:
    check_name("accountId", account_id)
    if not await book.revoke(check_channel(channel), account_id, sender):
        raise NotFoundError(f"{sender!r} has no approval on {channel}/{account_id}")


def _channel_query(query: str) -> str | None:
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=4)
    except ValueError as exc:
        raise BadRequestError(f"query: {exc}") from None
    names = [name for name, _ in pairs]
    if any(name != "channel" for name in names) or len(names) > 1:
        raise BadRequestError("query: only one parameter, channel, is known")
    return pairs[0][1] if pairs else None


def _field(data: dict[str, Any], name: str) -> str:
    value = req_str(data, name)
    if not value.strip() or len(value) > _MAX_FIELD:
        raise BadRequestError(f"{name}: a non-empty string of at most {_MAX_FIELD} characters")
    return value


def _now(gateway: Gateway) -> dt.datetime:
    # The gateway's wall clock: the one the access check dates codes by (virtual on a MockClock).
    return gateway.wall.now() if gateway.wall is not None else dt.datetime.now(dt.UTC)


# `gateway status` must answer with a hung disk or database: the pairing row waits this long.
STATUS_READ_SECONDS = 2.0


async def status_row(gateway: Gateway) -> dict[str, Any]:
    """The `pairing` row of `GET /v1/status`: live codes and approved senders, counted; or why
    they could not be (the row never fails the status)."""
    book = gateway.deps.pairing
    try:
        with trio.fail_after(STATUS_READ_SECONDS):
            return {
                "pending": len(await book.pending(None, _now(gateway))),
                "approvals": len(await book.approvals(None)),
            }
    except (trio.TooSlowError, GatewayError, OSError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200] if str(exc) else type(exc).__name__}


def routes(gateway: Gateway) -> list[Route]:
    def now() -> dt.datetime:
        return _now(gateway)

    async def list_pairing(request: Request) -> Response:
        return json_response(200, await listing(gateway.deps.pairing, _channel_query(request.query), now()))

    async def approve_code(request: Request) -> Response:
        data = request.json()
        approval = await approve(gateway.deps.pairing, _field(data, "channel"), _field(data, "code"), now())
        return json_response(200, {"approval": codec.unstructure(approval)})

    async def revoke_sender(request: Request) -> Response:
        data = request.json()
        channel, account_id, sender = (_field(data, k) for k in ("channel", "accountId", "sender"))
        await revoke(gateway.deps.pairing, channel, account_id, sender)
        return json_response(200, {"revoked": True, "channel": channel, "accountId": account_id, "sender": sender})

    return [
        Route("GET", ("v1", "pairing"), list_pairing),
        Route("POST", ("v1", "pairing", "approve"), approve_code),
        Route("POST", ("v1", "pairing", "revoke"), revoke_sender),
    ]
