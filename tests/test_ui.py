"""The Control UI's server side (SPEC 13), in-process on MockClock: the static page, the cookie
login and its CSRF rules, the event stream ending on disconnect and on stop, the retry button's
route. The page itself is tested in a real browser (tests/test_browser.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from trio_gateway.http import ui_auth
from trio_gateway.http.app import GatewayApp
from trio_gateway.http.asgi import Message
from trio_gateway.policy import config as cfg
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import build_gateway
from trio_gateway.storage.base import Claimed

TOKEN = "ui-test-token"
HOST = "127.0.0.1:18789"
ORIGIN = f"http://{HOST}"


@attrs.frozen
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def scope(method: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    hdrs = {"host": HOST, **headers}
    return {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
    }


async def call(app: GatewayApp, method: str, path: str, body: object = None, **headers: str) -> Reply:
    raw = b"" if body is None else json.dumps(body).encode()
    sent: list[Message] = []
    messages = [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    await app(scope(method, path, hdrs), receive, send)
    start, body_msg = sent
    return Reply(start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body_msg["body"])


@attrs.define
class Ui:
    gateway: Gateway
    app: GatewayApp


@pytest.fixture
async def ui(tmp_path: Path, autojump_clock: trio.abc.Clock) -> AsyncIterator[Ui]:
    config = cfg.parse({"gateway": {"testEndpoints": {"enabled": True}, "drain": {"timeoutSeconds": 10}}})
    gateway, _ = build_gateway(tmp_path, config)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        yield Ui(gateway, GatewayApp(gateway, TOKEN, {}))
        if gateway.state.value != "stopped":
            gateway.request_drain("stop", force=True)


def session_cookie(reply: Reply) -> str:
    cookie = reply.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    return cookie.split(";")[0]


async def test_the_page_is_served_without_a_token_and_loads_only_its_own_files(
    ui: Ui, autojump_clock: trio.abc.Clock
) -> None:
    page = await call(ui.app, "GET", "/ui")
    assert page.status == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    html = page.body.decode()
    assert 'src="/ui/app.js"' in html
    assert "http://" not in html
    assert "https://" not in html
    script = await call(ui.app, "GET", "/ui/app.js")
    assert (script.status, script.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert b"EventSource" in script.body
    missing = await call(ui.app, "GET", "/ui/../gateway.token")
    assert missing.status in (401, 404)
    assert (await call(ui.app, "GET", "/ui/secret.txt")).status == 404


async def test_token_login_gives_a_cookie_that_authenticates_reads(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    assert (await call(ui.app, "GET", "/v1/status")).status == 401
    wrong = await call(ui.app, "POST", "/v1/ui/login", {"token": "nope"}, origin=ORIGIN)
    assert (wrong.status, wrong.json["error"]) == (401, "UnauthorizedError")
    assert "set-cookie" not in wrong.headers
    good = await call(ui.app, "POST", "/v1/ui/login", {"token": TOKEN}, origin=ORIGIN)
    cookie = session_cookie(good)
    status = await call(ui.app, "GET", "/v1/status", cookie=cookie)
    assert (status.status, status.json["generation"]) == (200, 1)
    # A made-up cookie is no credential.
    assert (await call(ui.app, "GET", "/v1/status", cookie="tg_session=forged")).status == 401


async def test_cookie_posts_must_come_from_the_gateways_own_origin(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    cookie = session_cookie(await call(ui.app, "POST", "/v1/ui/login", {"token": TOKEN}, origin=ORIGIN))
    forged = await call(ui.app, "POST", "/v1/gateway/restart", {}, cookie=cookie, origin="http://evil.example")
    assert forged.status == 401
    no_origin = await call(ui.app, "POST", "/v1/gateway/restart", {}, cookie=cookie, sec_fetch_site="cross-site")
    assert no_origin.status == 401
    assert ui.gateway.state.value == "running"
    assert ui.gateway.drains == []
    ours = await call(ui.app, "POST", "/v1/gateway/restart", {}, cookie=cookie, origin=ORIGIN)
    assert ours.status == 202
    # A login form posted from another site is refused too.
    cross = await call(ui.app, "POST", "/v1/ui/login", {"token": TOKEN}, origin="http://evil.example")
    assert cross.status == 401


async def test_a_dashboard_code_works_once_and_expires(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    issued = await call(ui.app, "POST", "/v1/ui/codes", authorization=f"Bearer {TOKEN}")
    code = issued.json["code"]
    first = await call(ui.app, "POST", "/v1/ui/login", {"code": code}, origin=ORIGIN)
    session_cookie(first)
    again = await call(ui.app, "POST", "/v1/ui/login", {"code": code}, origin=ORIGIN)
    assert again.status == 401
    late = (await call(ui.app, "POST", "/v1/ui/codes", authorization=f"Bearer {TOKEN}")).json["code"]
    await trio.sleep(ui_auth.CODE_TTL_SECONDS + 1)
    assert (await call(ui.app, "POST", "/v1/ui/login", {"code": late}, origin=ORIGIN)).status == 401
    # Codes are for token holders only.
    assert (await call(ui.app, "POST", "/v1/ui/codes")).status == 401


async def test_logout_forgets_the_session(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    cookie = session_cookie(await call(ui.app, "POST", "/v1/ui/login", {"token": TOKEN}, origin=ORIGIN))
    out = await call(ui.app, "POST", "/v1/ui/logout", cookie=cookie, origin=ORIGIN)
    assert "Max-Age=0" in out.headers["set-cookie"]
    assert (await call(ui.app, "GET", "/v1/status", cookie=cookie)).status == 401


@attrs.define
class Stream:
    sent: list[Message] = attrs.Factory(list)
    gone: trio.Event = attrs.Factory(trio.Event)
    ended: trio.Event = attrs.Factory(trio.Event)

    def events(self) -> list[tuple[str, Any]]:
        text = b"".join(m.get("body", b"") for m in self.sent[1:]).decode()
        found = []
        for block in text.split("\n\n"):
            lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
            if "event" in lines:
                found.append((lines["event"], json.loads(lines["data"])))
        return found


async def open_stream(app: GatewayApp, nursery: trio.Nursery, stream: Stream) -> None:
    first = True

    async def receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"", "more_body": False}
        await stream.gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        stream.sent.append(message)

    async def run() -> None:
        await app(scope("GET", "/v1/events", {"authorization": f"Bearer {TOKEN}"}), receive, send)
        stream.ended.set()

    nursery.start_soon(run)


async def test_events_stream_status_and_log_and_end_when_the_client_leaves(
    ui: Ui, autojump_clock: trio.abc.Clock
) -> None:
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await open_stream(ui.app, nursery, stream)
        await trio.sleep(1)
        ui.gateway.log.warn("TEST", "a line for the page", key="value")
        await trio.sleep(1)
        assert stream.sent[0]["status"] == 200
        assert (b"content-type", b"text/event-stream; charset=utf-8") in stream.sent[0]["headers"]
        events = stream.events()
        statuses = [data for kind, data in events if kind == "status"]
        assert len(statuses) >= 3
        assert statuses[-1]["state"] == "running"
        assert statuses[-1]["generation"] == 1
        assert statuses[-1]["drainTimeoutSeconds"] == 10
        logs = [data for kind, data in events if kind == "log"]
        assert {"level": "WARN", "tag": "TEST", "message": "a line for the page", "key": "value"}.items() <= logs[
            -1
        ].items()
        # hypercorn would keep calling a handler whose client left: ours must end by itself.
        stream.gone.set()
        with trio.fail_after(5):
            await stream.ended.wait()
    assert stream.sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_events_show_a_running_drain_then_end_when_the_gateway_stops(
    ui: Ui, autojump_clock: trio.abc.Clock
) -> None:
    stream = Stream()
    async with trio.open_nursery() as nursery:
        await open_stream(ui.app, nursery, stream)
        await ui.gateway.stall_model_call(None, 600)
        ui.gateway.request_drain("restart")
        await trio.sleep(3)
        draining = [d for k, d in stream.events() if k == "status" and d["state"] == "draining"]
        assert draining[-1]["drain"]["kind"] == "restart"
        assert 6 < draining[-1]["drain"]["remainingSeconds"] <= 7.5
        assert [w["kind"] for w in draining[-1]["work"]] == ["model_call"]
        await ui.gateway.state.wait_value(lambda s: s == "running" and ui.gateway.generation_number == 2)
        await trio.sleep(1)
        last = [d for k, d in stream.events() if k == "status"][-1]
        assert (last["generation"], last["drains"][-1]["timedOut"], last["drains"][-1]["timeoutSeconds"]) == (
            2,
            True,
            10,
        )
        ui.gateway.request_drain("stop")
        with trio.fail_after(5):
            await stream.ended.wait()


async def test_retry_route_moves_a_dead_letter_back_to_pending(ui: Ui, autojump_clock: trio.abc.Clock) -> None:
    auth = {"authorization": f"Bearer {TOKEN}"}
    body = {"channel": "console", "to": "ops", "agentId": "main", "text": "x"}
    created = await call(ui.app, "POST", "/v1/deliveries", body, **auth)
    entry_id = created.json["id"]
    queue = ui.app._queue()
    assert ui.gateway.wall is not None
    claimed = await queue.claim(entry_id, ui.gateway.wall.now())
    assert isinstance(claimed, Claimed)
    await queue.dead_letter(claimed, "HTTP 404 no such user", ui.gateway.wall.now())
    listed = (await call(ui.app, "GET", "/v1/deliveries", **auth)).json
    assert [(e["id"], e["failedReason"]) for e in listed["failed"]] == [(entry_id, "HTTP 404 no such user")]
    retried = await call(ui.app, "POST", f"/v1/deliveries/{entry_id}/retry", {}, **auth)
    assert retried.status == 202
    listed = (await call(ui.app, "GET", "/v1/deliveries", **auth)).json
    assert listed["failed"] == []
    assert [e["id"] for e in listed["pending"]] == [entry_id]
    assert (await call(ui.app, "POST", "/v1/deliveries/nope/retry", {}, **auth)).status == 404
