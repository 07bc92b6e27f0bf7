"""What the API app (`http.app`) and its route modules (`http.ui`, `http.turns`) share: the
request and response records, the route table's entries, JSON answers. Its own module so the
route modules build on it without importing the app that mounts them (no import cycle).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping

import attrs

from trio_gateway.errors import GatewayError
from trio_gateway.http.asgi import Receive, Send
from trio_gateway.http.body import JsonObject, json_object
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.queue import DeliveryQueue


@attrs.frozen
class Request:
    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    query: str = ""  # the raw query string (`state=failed&limit=50`)

    def json(self, *, empty_ok: bool = False) -> JsonObject:
        return json_object(self.body, empty_ok=empty_ok)


@attrs.frozen
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    close: bool = False  # True: `Connection: close`
    headers: tuple[tuple[bytes, bytes], ...] = ()
    # A streamed body (server-sent events): sent after the headers, instead of `body`.
    stream: Callable[[Receive, Send], Awaitable[None]] | None = None

    def with_headers(self, *more: tuple[bytes, bytes]) -> Response:
        return attrs.evolve(self, headers=self.headers + more)


def json_response(status: int, obj: object) -> Response:
    # backslashreplace: a lone surrogate that got into state anyway is answered as the JSON
    # escape `\ud800`, never a 500 on every later status request.
    return Response(status, json.dumps(obj, ensure_ascii=False).encode("utf-8", "backslashreplace") + b"\n")


def error_response(exc: GatewayError) -> Response:
    return json_response(exc.http_status, {"error": exc.name, "message": str(exc)})


Handler = Callable[..., Awaitable[Response]]


@attrs.frozen
class Route:
    method: str
    pattern: tuple[str, ...]  # path segments; "{name}" captures one segment
    handler: Handler
    auth: bool = True
    # Waits on long work: runs under a watch for the client's disconnect.
    long: bool = False
    # Checks that need only the headers and path (account, signature headers), run BEFORE the
    # body is read: a stranger must not make an unauthenticated route buffer a megabyte.
    before_body: Callable[..., None] | None = None

    def match(self, method: str, segments: list[str]) -> dict[str, str] | None:
        if method != self.method or len(segments) != len(self.pattern):
            return None
        params = {}
        for want, got in zip(self.pattern, segments, strict=True):
            if want.startswith("{"):
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params


def delivery_store(gateway: Gateway) -> DeliveryStore:
    """The queue the API lists and retries in: the generation's own store (in cluster mode,
    the shared database). Before generation 1 has built its delivery side (the server starts
    first), the files."""
    service = gateway.delivery
    if service is not None:
        return service.store
    deps = gateway.deps
    return DeliveryQueue(deps.home.queue_dir, deps.runner, deps.log)
