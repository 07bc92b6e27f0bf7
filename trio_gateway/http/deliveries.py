"""`GET /v1/deliveries`, a page at a time (issue 25: 20,000 dead letters were one 28 MB answer
and a 0.85 s stall of the event loop, fetched again by every refresh of the page).

Query parameters (README "Departures from SPEC"): `state` (`pending`, which includes entries
being sent, or `failed`; both lists when absent), `limit` (per list, 1..1000, default 100) and
`after` (an entry id: the page starts after it; with `state` only). Entries are in id order,
which is the order they were created in, so a page boundary holds while entries come and go.
Each list comes with its `total` and the `next` page's `after` (null on the last page).
Dead letters, which pile up, are read a page at a time (`DeliveryStore.failed_page`: file
names, or an indexed query); pending entries, which the worker keeps moving, are read whole and
paged here.
"""

from __future__ import annotations

import bisect
import urllib.parse
from typing import Any

from trio_gateway.errors import BadRequestError
from trio_gateway.policy.entry import DeliveryEntry, check_id, entry_to_json
from trio_gateway.storage.base import DeliveryStore

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_PARAMS = ("state", "limit", "after")


def parse_query(query: str) -> dict[str, str]:
    """The query string's parameters; a name given twice or not known is a 400."""
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query), max_num_fields=10)
    except ValueError as exc:
        raise BadRequestError(f"query: {exc}") from None
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMS:
            raise BadRequestError(f"query: unknown parameter {name[:40]!r} (known: {', '.join(_PARAMS)})")
        if name in params:
            raise BadRequestError(f"query: {name} given twice")
        params[name] = value
    return params


def _limit(params: dict[str, str]) -> int:
    text = params.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text[:6]) <= MAX_LIMIT:
        raise BadRequestError(f"limit: a whole number from 1 to {MAX_LIMIT}, got {text[:40]!r}")
    return int(text)


def _page(entries: list[tuple[DeliveryEntry, str]], after: str | None, limit: int) -> dict[str, Any]:
    ordered = sorted(entries, key=lambda pair: pair[0].id)
    skip = bisect.bisect_right([e.id for e, _ in ordered], after) if after is not None else 0
    page = ordered[skip : skip + limit]
    more = skip + limit < len(ordered)
    return {
        "entries": [entry_to_json(e) | {"state": state} for e, state in page],
        "total": len(ordered),
        "next": page[-1][0].id if more and page else None,
    }


async def listing(queue: DeliveryStore, query: str) -> dict[str, Any]:
    params = parse_query(query)
    state = params.get("state")
    if state not in (None, "pending", "failed"):
        raise BadRequestError(f"state: pending or failed, got {state[:40]!r}")
    after = params.get("after")
    if after is not None:
        if state is None:
            raise BadRequestError("after: give state too (a page of one list)")
        check_id(after)
    limit = _limit(params)
    body: dict[str, Any] = {"total": {}, "next": {}}
    if state in (None, "pending"):
        pending = [(e, "sending") for e in await queue.list_inflight()]
        pending += [(e, "pending") for e in await queue.list_pending()]
        _put(body, "pending", _page(pending, after, limit))
    if state in (None, "failed"):
        # Only the page is read: 20,000 dead letters were all read, parsed and sent at once.
        failed, total = await queue.failed_page(after, limit + 1)  # one more: is there a next page?
        page = failed[:limit]
        _put(
            body,
            "failed",
            {
                "entries": [entry_to_json(e) | {"state": "failed"} for e in page],
                "total": total,
                "next": page[-1].id if len(failed) > limit else None,
            },
        )
    return body


def _put(body: dict[str, Any], name: str, page: dict[str, Any]) -> None:
    body[name] = page["entries"]
    body["total"][name] = page["total"]
    body["next"][name] = page["next"]
