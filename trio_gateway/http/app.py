"""The HTTP API (SPEC 5) as a plain ASGI application over a running `Gateway`.

No framework: a dozen routes, JSON in and out, and two things a framework would hide that
matter here. First, a handler that waits on long work must notice its client leaving
(hypercorn does not cancel it), so those run in `_until_disconnected`. Second, intake is
atomic: once `gateway.submit` has started it runs to completion, because the turn is on disk
before it returns and a half-cancelled submit would leave accepted work nobody started.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

import attrs
import trio

from trio_gateway.channels.registry import NAMES as CHANNEL_NAMES
from trio_gateway.channels.registry import check_address, check_configured
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.errors import (
    BadRequestError,
    GatewayBusyError,
    GatewayDrainingError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnauthorizedError,
    chosen,
)
from trio_gateway.http import auth, deliveries, inbound, metrics, pairing, turns, ui, views
from trio_gateway.http.asgi import Receive, Scope, Send, lifespan
from trio_gateway.http.base import Request, Response, Route, delivery_store, error_response, json_response
from trio_gateway.http.body import JsonObject, opt_bool, opt_number, opt_str, req_obj, req_str
from trio_gateway.http.ui_auth import UiAuth
from trio_gateway.policy.config import RANGES, Config
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.deps import ServiceOutbox
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.home import read_token
from trio_gateway.work.drain import DrainKind, DrainRequest

# The stall endpoint's default: longer than any sane stall threshold or drain timeout.
DEFAULT_STALL_MS = 3_600_000
MAX_STALL_MS = 86_400_000  # durationMs range: (0, one day]


def _segments(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


@attrs.define(eq=False)
class GatewayApp:
    gateway: Gateway
    token: str
    env: Mapping[str, str]
    wall_time: Callable[[], float] = time.time
    # The read-only token for `GET /metrics` (SPEC 5; `token create --metrics`), read at each
    # scrape it is offered to, so a token made while the gateway runs works without a restart.
    metrics_token_path: Path | None = None
    routes: list[Route] = attrs.field(init=False)
    # The bearer token, or the Control UI's session cookie (SPEC 13).
    ui_auth: UiAuth = attrs.field(init=False)
    # `POST /channels/{channel}/{accountId}/events` (SPEC 11, 15).
    _webhooks: inbound.Webhooks = attrs.field(init=False)
    # Unauthenticated bodies being read now (sized from the running config at each use).
    _unverified: trio.CapacityLimiter | None = None

    def __attrs_post_init__(self) -> None:
        self.ui_auth = UiAuth(self.token)
        self._webhooks = inbound.Webhooks(self.gateway, self.env, self.wall_time)
        r = Route
        self.routes = [
            r("GET", ("healthz",), self._healthz, auth=False),
            # Its own check: the admin token, or the read-only metrics token (`_metrics`).
            r("GET", ("metrics",), self._metrics, auth=False),
            r("GET", ("v1", "status"), self._status),
            r("GET", ("v1", "cluster"), self._cluster),
            r("POST", ("v1", "gateway", "restart"), self._restart, long=True),
            r("POST", ("v1", "gateway", "stop"), self._stop),
            r("GET", ("v1", "gateway", "drains"), self._drains),
            r("GET", ("v1", "sessions"), self._list_sessions),
            r("POST", ("v1", "sessions"), self._start_session),
            r("POST", ("v1", "sessions", "{session_id}", "abort"), self._abort_session),
            r("GET", ("v1", "deliveries"), self._list_deliveries),
            r("POST", ("v1", "deliveries"), self._create_delivery),
            *self._webhooks.routes(),
            r("GET", ("v1", "channels"), self._channels),
            r("POST", ("v1", "channels", "{channel}", "{account_id}", "resume"), self._resume_channel),
            r("POST", ("internal", "test", "stall-model-call"), self._stall_model_call),
            *ui.routes(self.gateway, self.ui_auth),
            *turns.routes(self.gateway),
            *pairing.routes(self.gateway),
        ]

    @property
    def config(self) -> Config:
        return self.gateway.config

    # --- ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
        elif scope["type"] == "http":
            response = await self._respond(scope, receive)
            await _send(send, response, receive)

    async def _respond(self, scope: Scope, receive: Receive) -> Response:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            route, params, body = await self._intake(scope, receive, headers)
        except GatewayError as exc:
            # Refused before the whole body was read: close the connection rather than wait
            # for (and discard) the rest of a body nobody will read.
            return attrs.evolve(error_response(exc), close=True)
        except Exception as exc:
            return attrs.evolve(self._unexpected(scope, exc), close=True)
        try:
            query = scope.get("query_string", b"").decode("latin-1")
            request = Request(scope["method"], scope["path"], headers, body, query)
            if route.long:
                return await _until_disconnected(receive, lambda: route.handler(request, **params))
            return await route.handler(request, **params)
        except GatewayError as exc:
            return error_response(exc)
        except Exception as exc:
            return self._unexpected(scope, exc)

    def _unexpected(self, scope: Scope, exc: Exception) -> Response:
        # One broken request must not take the server down.
        self.gateway.log.error("HTTP", "Request failed", path=scope["path"], error=repr(exc))
        return json_response(500, {"error": "InternalError", "message": "unexpected error; see the gateway log"})

    async def _intake(
        self, scope: Scope, receive: Receive, headers: Mapping[str, str]
    ) -> tuple[Route, dict[str, str], bytes]:
        """Route, refuse what the headers already condemn, then read the body (bounded)."""
        route, params = self._route(scope["method"], scope["path"], headers)
        _check_declared_length(headers, self.config.gateway.max_body_bytes)
        if route.before_body is not None:
            route.before_body(headers, **params)
        verified = route.auth or route.method == "GET"  # GET /healthz must answer under attack
        body = await (self._read_body if verified else self._read_unverified_body)(receive, headers)
        return route, params, body

    async def _read_unverified_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """A body whose sender is not known yet: at most `maxUnverifiedBodies` read at once, so
        strangers with many connections still pin a bounded amount of memory."""
        limit = self.config.gateway.max_unverified_bodies
        if self._unverified is None:
            self._unverified = trio.CapacityLimiter(limit)
        elif self._unverified.total_tokens != limit:
            # A restart reloaded gateway.json; bodies being read keep their slots.
            self._unverified.total_tokens = limit
        try:
            self._unverified.acquire_nowait()
        except trio.WouldBlock:
            raise GatewayBusyError(
                f"{limit} unverified request bodies are being read (gateway.maxUnverifiedBodies)"
            ) from None
        try:
            return await self._read_body(receive, headers)
        finally:
            self._unverified.release()

    async def _read_body(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        gateway = self.config.gateway
        with trio.move_on_after(gateway.body_read_timeout_seconds):
            return await _read_body(receive, headers, gateway.max_body_bytes)
        raise RequestTimeoutError(
            f"request body not received within gateway.bodyReadTimeoutSeconds={gateway.body_read_timeout_seconds:g}"
        )

    def _route(self, method: str, path: str, headers: Mapping[str, str]) -> tuple[Route, dict[str, str]]:
        segments = _segments(path)
        found = [(r, p) for r in self.routes if (p := r.match(method, segments)) is not None]
        if not found:
            # Authenticate before saying what exists, so a stranger learns nothing.
            if path != "/healthz":
                self.ui_auth.check(method, headers)
            raise NotFoundError(f"no route {method} {path}")
        route, params = found[0]
        if route.auth:
            self.ui_auth.check(method, headers)
        if segments[0] == "internal" and not self.config.gateway.test_endpoints.enabled:
            raise NotFoundError(f"no route {method} {path} (gateway.testEndpoints.enabled is false)")
        return route, params

    # --- lifecycle -----------------------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return json_response(200, views.health(self.gateway))

    async def _status(self, request: Request) -> Response:
        return json_response(200, views.status(self.gateway) | {"pairing": await pairing.status_row(self.gateway)})

    async def _cluster(self, request: Request) -> Response:
        """What `cluster status --json` prints (SPEC 12), as this node sees the database."""
        read = self.gateway.deps.cluster_status
        if read is None:
            raise NotFoundError('cluster mode is off (cluster.backend is not "postgres")')
        return json_response(200, await read())

    async def _metrics(self, request: Request) -> Response:
        try:
            self.ui_auth.check(request.method, request.headers)
        except UnauthorizedError:
            await self._check_metrics_token(request.headers)
        return Response(200, metrics.render(self.gateway).encode(), metrics.CONTENT_TYPE)

    async def _check_metrics_token(self, headers: Mapping[str, str]) -> None:
        """The read-only metrics token, when one was made: it opens `/metrics` and nothing else."""
        path = self.metrics_token_path
        token = None
        if path is not None:
            # A small local file; in a thread all the same (a hung disk must not freeze the
            # loop), abandoned when the scrape gives up (WAITS.md).
            token = await trio.to_thread.run_sync(read_token, path, abandon_on_cancel=True)
        if token is None:
            raise UnauthorizedError("missing or wrong bearer token (the admin token or the metrics token)")
        auth.check_bearer(headers, token)

    async def _restart(self, request: Request) -> Response:
        data = request.json(empty_ok=True)
        drain, accepted = self._request_drain("restart", data)
        if not opt_bool(data, "wait"):
            return accepted
        # `"wait": true`: answer when the new generation accepts work (for scripts and curl).
        await drain.done.wait()
        return json_response(200, views.restart_outcome(self.gateway))

    async def _drains(self, request: Request) -> Response:
        """Completed drains of this process, oldest first: how `gateway restart` reports the
        outcome of the drain it asked for."""
        return json_response(200, views.drains(self.gateway))

    async def _stop(self, request: Request) -> Response:
        return self._request_drain("stop", request.json(empty_ok=True))[1]

    def _request_drain(self, kind: DrainKind, data: JsonObject) -> tuple[DrainRequest, Response]:
        if self.gateway.state.value == "stopped":
            raise GatewayDrainingError("the gateway is stopping")
        force = bool(opt_bool(data, "force"))
        timeout = opt_number(data, "timeoutSeconds", *RANGES["gateway.drain.timeoutSeconds"], inclusive=True)
        generation = self.gateway.generation_number
        drain = self.gateway.request_drain(kind, force=force, timeout=timeout)
        body = views.drain_status(drain, trio.current_time()) | {"fromGeneration": generation}
        return drain, json_response(202, {"drain": body})

    # --- sessions ------------------------------------------------------------------------

    async def _list_sessions(self, request: Request) -> Response:
        return json_response(200, {"sessions": views.sessions(self.gateway)})

    async def _start_session(self, request: Request) -> Response:
        data = request.json()
        agent_id = req_str(data, "agent")
        prompt = req_str(data, "prompt")
        origin = self._origin(req_obj(data, "origin"), agent_id)
        session_id, turn_id = await self.gateway.submit(agent_id=agent_id, origin=origin, prompt=prompt)
        return json_response(202, {"sessionId": session_id, "turnId": turn_id})

    def _origin(self, raw: JsonObject, agent_id: str) -> Origin:
        agent = self.config.agents.get(agent_id)
        if agent is None:
            raise BadRequestError(f"agent: no agent named {agent_id!r} (known: {', '.join(self.config.agents)})")
        channel = req_str(raw, "channel", "origin.channel")
        to = req_str(raw, "to", "origin.to")
        account = opt_str(raw, "accountId", "origin.accountId") or agent.account_id
        if channel not in CHANNEL_NAMES:
            raise BadRequestError(f"origin.channel: unknown channel {channel!r} (known: {', '.join(CHANNEL_NAMES)})")
        check_address(channel, to)
        return Origin(channel, to, account)

    async def _abort_session(self, request: Request, session_id: str) -> Response:
        was_busy = self.gateway.abort_session(session_id)
        return json_response(200, {"sessionId": session_id, "aborted": was_busy})

    # --- deliveries ----------------------------------------------------------------------

    def _queue(self) -> DeliveryStore:
        return delivery_store(self.gateway)

    async def _list_deliveries(self, request: Request) -> Response:
        return json_response(200, await deliveries.listing(self._queue(), request.query))

    async def _create_delivery(self, request: Request) -> Response:
        data = request.json()
        channel = req_str(data, "channel")
        to = req_str(data, "to")
        text = req_str(data, "text")
        account = opt_str(data, "accountId")
        agent_id = opt_str(data, "agentId")
        if agent_id is not None and agent_id not in self.config.agents:
            raise BadRequestError(f"agentId: no agent named {agent_id!r}")
        check_configured(self.config.channels, channel, to, account)
        entry = await self._manual_outbox().submit_manual(channel, to, account, agent_id, text)
        return json_response(202, {"id": entry.id, "channel": entry.channel, "to": entry.to})

    def _manual_outbox(self) -> ServiceOutbox:
        # The generation's outbox wakes its worker at once; before generation 1 has one, write
        # to the queue directly and the worker finds it at its first scan.
        service = self.gateway.delivery
        if service is not None:
            return service.outbox
        assert self.gateway.wall is not None
        return Outbox(self._queue(), self.config.agents, self.gateway.wall, self.gateway.log)

    # --- listening channels (SPEC 11) ----------------------------------------------------

    async def _channels(self, request: Request) -> Response:
        listeners = self.gateway.listeners
        return json_response(200, {"channels": listeners.status() if listeners is not None else []})

    async def _resume_channel(self, request: Request, channel: str, account_id: str) -> Response:
        self._webhooks.account(channel, account_id)  # 404 for an account that is not configured
        listeners = self.gateway.listeners
        resumed = listeners.resume(channel, account_id) if listeners is not None else False
        return json_response(200, {"channel": channel, "accountId": account_id, "resumed": resumed})

    # --- test endpoints ------------------------------------------------------------------

    async def _stall_model_call(self, request: Request) -> Response:
        data = request.json(empty_ok=True)
        session_id = opt_str(data, "sessionId")
        duration_ms = opt_number(data, "durationMs", 0, MAX_STALL_MS)
        seconds = (duration_ms if duration_ms is not None else DEFAULT_STALL_MS) / 1000
        session, turn = await self.gateway.stall_model_call(session_id, seconds)
        return json_response(202, {"sessionId": session, "turnId": turn, "durationMs": seconds * 1000})


# --- ASGI plumbing ------------------------------------------------------------------------


def _check_declared_length(headers: Mapping[str, str], limit: int) -> None:
    declared = headers.get("content-length", "")
    # Compared as text first: int() of a 5,000-digit header would raise, not answer 413.
    if declared.isascii() and declared.isdigit() and (len(declared) > 15 or int(declared) > limit):
        raise PayloadTooLargeError(f"body of {declared[:20]} bytes exceeds gateway.maxBodyBytes={limit}")


async def _read_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone("client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"body exceeds gateway.maxBodyBytes={limit}")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


class _ClientGone(GatewayError):
    """The client left before sending its whole request: nothing to answer."""

    http_status = 400


async def _until_disconnected(receive: Receive, handler: Callable[[], Awaitable[Response]]) -> Response:
    """Run `handler`, cancelling it if the client disconnects first (then the answer goes
    nowhere, and `_ClientGone` is what is 'sent')."""
    result: list[Response] = []
    try:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            result.append(await handler())
            nursery.cancel_scope.cancel()
    except* GatewayError as group:
        # Answered like any other handler's error: one response, so one error answers (the
        # first); any other is named in its notes.
        raise chosen(group) from None
    if not result:
        raise _ClientGone("client disconnected")
    return result[0]


async def _send(send: Send, response: Response, receive: Receive) -> None:
    if response.stream is not None:
        await send({"type": "http.response.start", "status": response.status, "headers": list(response.headers)})
        await response.stream(receive, send)
        return
    headers = [
        (b"content-type", response.content_type.encode()),
        (b"content-length", str(len(response.body)).encode()),
        (b"cache-control", b"no-store"),
        *response.headers,
    ]
    if response.close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
