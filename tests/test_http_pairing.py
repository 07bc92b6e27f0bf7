"""`/v1/pairing` (SPEC 15 "Access"): list, approve and revoke over HTTP, behind the admin token,
with clear 400s and 404s; an approval is in the gateway's book at once."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from test_http_api import ENV, TOKEN, Driver, Running, config

from trio_gateway.http.app import GatewayApp
from trio_gateway.http.pairing import STATUS_READ_SECONDS
from trio_gateway.policy.pairing import PendingCode
from trio_gateway.sim.runtime import build_gateway
from trio_gateway.storage.access import FileAccessBook


@pytest.fixture
async def running(tmp_path: Path, autojump_clock: trio.abc.Clock) -> AsyncIterator[Running]:
    gateway, sink = build_gateway(tmp_path, config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        yield Running(gateway, sink, Driver(GatewayApp(gateway, TOKEN, ENV)))
        gateway.request_drain("stop", force=True)


def now(running: Running) -> dt.datetime:
    assert running.gateway.wall is not None
    return running.gateway.wall.now()


async def strangers(running: Running) -> list[str]:
    """Two strangers on telegram, one on discord, as the access check would have met them."""
    book = running.gateway.deps.pairing
    offered = [
        await book.offer_code("telegram", "bot1", "42", now(running)),
        await book.offer_code("telegram", "bot1", "43", now(running)),
        await book.offer_code("discord", "d1", "99", now(running)),
    ]
    return [o.code for o in offered if o is not None]


async def test_the_book_is_the_homes_files(running: Running) -> None:
    book = running.gateway.deps.pairing
    assert isinstance(book, FileAccessBook)
    assert book.root == running.gateway.deps.home.root / "access"


async def test_list_approve_revoke(running: Running) -> None:
    codes = await strangers(running)
    listed = await running.call("GET", "/v1/pairing")
    assert listed.status == 200
    assert [(p["channel"], p["accountId"], p["sender"], p["code"]) for p in listed.json["pending"]] == [
        ("telegram", "bot1", "42", codes[0]),
        ("telegram", "bot1", "43", codes[1]),
        ("discord", "d1", "99", codes[2]),
    ]
    assert listed.json["approvals"] == []
    one = await running.call("GET", "/v1/pairing?channel=discord")
    assert [p["sender"] for p in one.json["pending"]] == ["99"]

    approved = await running.call("POST", "/v1/pairing/approve", {"channel": "telegram", "code": codes[1].lower()})
    assert approved.status == 200
    assert approved.json["approval"]["sender"] == "43"
    assert approved.json["approval"]["accountId"] == "bot1"
    assert await running.gateway.deps.pairing.is_approved("telegram", "bot1", "43")  # at once
    after = (await running.call("GET", "/v1/pairing")).json
    assert [p["sender"] for p in after["pending"]] == ["42", "99"]
    assert [(a["channel"], a["sender"]) for a in after["approvals"]] == [("telegram", "43")]

    again = await running.call("POST", "/v1/pairing/approve", {"channel": "telegram", "code": codes[1]})
    assert again.status == 404
    assert again.json["error"] == "NotFoundError"
    assert "expired or approved" in again.json["message"]

    body = {"channel": "telegram", "accountId": "bot1", "sender": "43"}
    revoked = await running.call("POST", "/v1/pairing/revoke", body)
    assert (revoked.status, revoked.json["revoked"]) == (200, True)
    assert not await running.gateway.deps.pairing.is_approved("telegram", "bot1", "43")
    gone = await running.call("POST", "/v1/pairing/revoke", body)
    assert gone.status == 404
    assert "has no approval" in gone.json["message"]


async def test_a_code_expires_after_an_hour(running: Running, autojump_clock: trio.abc.Clock) -> None:
    codes = await strangers(running)
    await trio.sleep(3600)
    assert (await running.call("GET", "/v1/pairing")).json["pending"] == []
    late = await running.call("POST", "/v1/pairing/approve", {"channel": "telegram", "code": codes[0]})
    assert late.status == 404


@pytest.mark.parametrize(
    ("method", "path", "body", "says"),
    [
        ("POST", "/v1/pairing/approve", {"channel": "telgram", "code": "AAAA2222"}, "'telgram' is not a channel"),
        ("POST", "/v1/pairing/approve", {"channel": "telegram"}, "code: expected a non-empty string, missing"),
        ("POST", "/v1/pairing/approve", {"channel": "telegram", "code": 7}, "code: expected a non-empty string"),
        ("POST", "/v1/pairing/approve", b"[1]", "JSON object"),
        ("POST", "/v1/pairing/revoke", {"channel": "telegram", "accountId": "../x", "sender": "1"}, "plain name"),
        ("POST", "/v1/pairing/revoke", {"channel": "telegram", "accountId": "bot1"}, "sender: expected"),
        ("GET", "/v1/pairing?channel=nope", None, "'nope' is not a channel"),
        ("GET", "/v1/pairing?chanel=telegram", None, "only one parameter"),
    ],
)
async def test_bad_requests_are_400s_naming_the_field(
    running: Running, method: str, path: str, body: object, says: str
) -> None:
    reply = await running.call(method, path, body)
    assert reply.status == 400, reply.json
    assert reply.json["error"] == "BadRequestError"
    assert says in reply.json["message"]


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/pairing"), ("POST", "/v1/pairing/approve"), ("POST", "/v1/pairing/revoke")]
)
async def test_every_route_needs_the_admin_token(running: Running, method: str, path: str) -> None:
    codes = await strangers(running)
    reply = await running.call(method, path, {"channel": "telegram", "code": codes[0]}, {"authorization": "Bearer x"})
    assert reply.status == 401
    assert not await running.gateway.deps.pairing.approvals(None)
    assert len(await running.gateway.deps.pairing.pending(None, now(running))) == 3


async def test_the_status_has_a_pairing_row(running: Running) -> None:
    await strangers(running)
    codes = [p.code for p in await running.gateway.deps.pairing.pending(None, now(running))]
    await running.call("POST", "/v1/pairing/approve", {"channel": "telegram", "code": codes[0]})
    status = await running.call("GET", "/v1/status")
    assert status.json["pairing"] == {"pending": 2, "approvals": 1}


class HungBook(FileAccessBook):
    async def pending(self, channel: str | None, now: dt.datetime) -> list[PendingCode]:
        await trio.sleep_forever()
        raise AssertionError


async def test_a_hung_book_does_not_hang_the_status(running: Running, autojump_clock: trio.abc.Clock) -> None:
    deps = running.gateway.deps
    deps.pairing = HungBook(deps.home.access_dir, deps.runner, deps.log)
    started = trio.current_time()
    status = await running.call("GET", "/v1/status")
    assert status.status == 200
    assert status.json["pairing"] == {"error": "TooSlowError"}
    assert trio.current_time() - started == pytest.approx(STATUS_READ_SECONDS)
