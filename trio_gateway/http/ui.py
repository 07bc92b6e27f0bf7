"""The Control UI's routes (SPEC 13), mounted on the API app.

GET  /ui, /ui/{file}          the page: static files shipped in the package, no network
POST /v1/ui/login             {"code"} or {"token"} -> an HttpOnly, SameSite=Strict cookie
POST /v1/ui/logout
POST /v1/ui/codes             a one-time login code (what `trio-gateway dashboard` prints)
GET  /v1/events               server-sent events: status snapshots and log lines
POST /v1/deliveries/{id}/retry  a dead letter back to pending (the page's retry button)
"""

from __future__ import annotations

import importlib.resources
from functools import cache
from typing import Any

import trio

from trio_gateway.delivery.outbox import Outbox
from trio_gateway.errors import NotFoundError, UnauthorizedError
from trio_gateway.http import events, ui_auth, views
from trio_gateway.http.base import Request, Response, Route, delivery_store, json_response
from trio_gateway.http.body import opt_str
from trio_gateway.http.ui_auth import UiAuth
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.version import __version__

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page loads nothing but its own files and talks to nothing but its own origin.
PAGE_HEADERS = (
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
DRAINS_SHOWN = 20


@cache
def _static(name: str) -> bytes:
    return importlib.resources.files("trio_gateway.http").joinpath("ui_static", name).read_bytes()


def routes(gateway: Gateway, auth: UiAuth) -> list[Route]:
    ui = ControlUi(gateway, auth)
    return [
        Route("GET", ("ui",), ui.page, auth=False),
        Route("GET", ("ui", "{name}"), ui.asset, auth=False),
        Route("POST", ("v1", "ui", "login"), ui.login, auth=False),
        Route("POST", ("v1", "ui", "logout"), ui.logout, auth=False),
        Route("POST", ("v1", "ui", "codes"), ui.new_code),
        Route("GET", ("v1", "events"), ui.events),
        Route("POST", ("v1", "deliveries", "{entry_id}", "retry"), ui.retry),
    ]


class ControlUi:
    def __init__(self, gateway: Gateway, auth: UiAuth) -> None:
        self.gateway = gateway
        self.auth = auth
        self.tail = events.LogTail()
        gateway.log.sinks.append(self.tail)

    # --- the page ------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return self._file("index.html")

    async def asset(self, request: Request, name: str) -> Response:
        if name not in STATIC:
            raise NotFoundError(f"no file {name!r} in the Control UI")
        return self._file(name)

    @staticmethod
    def _file(name: str) -> Response:
        return Response(200, _static(name), STATIC[name], headers=PAGE_HEADERS)

    # --- login ---------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if not ui_auth.same_origin(request.headers):
            raise UnauthorizedError("log in from the Control UI's own page")
        data = request.json()
        session = self.auth.login(code=opt_str(data, "code"), token=opt_str(data, "token"))
        secure = request.headers.get("x-forwarded-proto") == "https"
        cookie = ui_auth.set_cookie(session, secure=secure)
        return json_response(200, {"ok": True}).with_headers((b"set-cookie", cookie))

    async def logout(self, request: Request) -> Response:
        self.auth.logout(request.headers)
        return json_response(200, {"ok": True}).with_headers((b"set-cookie", ui_auth.clear_cookie()))

    async def new_code(self, request: Request) -> Response:
        code = self.auth.new_code()
        return json_response(200, {"code": code, "expiresInSeconds": ui_auth.CODE_TTL_SECONDS})

    # --- live data -----------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        state = self.gateway.state
        stream = events.EventStream(self.snapshot, self.tail, lambda: state.wait_value("stopped"))
        return Response(200, b"", headers=events.STREAM_HEADERS, stream=stream.run)

    def snapshot(self) -> dict[str, Any]:
        gateway = self.gateway
        config = gateway.config.gateway
        status = views.status(gateway)
        status["version"] = __version__
        status["drains"] = [views.drain_report(r) for r in gateway.drains[-DRAINS_SHOWN:]]
        status["drainTimeoutSeconds"] = config.drain.timeout_seconds
        detection = config.stalled_task_detection
        status["stallThresholdSeconds"] = detection.threshold_seconds if detection.enabled else None
        status["now"] = round(trio.current_time() - gateway.started_at, 3)
        return status

    # --- the retry button ----------------------------------------------------------------

    async def retry(self, request: Request, entry_id: str) -> Response:
        gateway = self.gateway
        assert gateway.wall is not None
        entry = await delivery_store(gateway).retry_dead(entry_id, gateway.wall.now())
        outbox = getattr(gateway.delivery, "outbox", None)
        if isinstance(outbox, Outbox) and outbox.on_enqueued is not None:
            outbox.on_enqueued(entry)  # the worker sends it now, not at its next rescan
        gateway.log.info("DELIVERY", "Dead letter retried by operator", id=entry.id, channel=entry.channel)
        return json_response(202, {"id": entry.id, "state": "pending"})
