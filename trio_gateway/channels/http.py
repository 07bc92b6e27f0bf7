"""The HTTP plumbing every HTTP channel shares: one client per account, POST JSON, turn
transport failures into `retry` outcomes, and keep secrets out of anything we report.

One `AsyncClient` per account rather than one for the gateway: each account has its own base
URL and credentials, and its own connection pool means a platform whose connects hang can
exhaust only its own pool slots (httpcore #1093 leaks slots on cancel-during-connect), never
another channel's. The SSL context, the costly part (~80 ms), is built once and shared.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from trio_gateway import upstream as httpx
from trio_gateway.channels.base import Classifier, Outcome, short, transport_error
from trio_gateway.channels.inbound import AuthFailed, ListenError

# Bounds inside the worker's own per-attempt deadline: a connect that hangs should end as a
# retry well before the attempt is cut off, so the reason says what went wrong.
DEFAULT_TIMEOUT = httpx.Timeout(20.0, connect=10.0)
REDACTED = "REDACTED"


def scrub(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret replaced, so a reason or log line can never carry one."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def stable_key(key: str, limit: int) -> str:
    """The idempotency key itself when it fits the platform's limit, else a hash of it: the same
    entry always maps to the same value, so a resend after a crash is still deduplicated."""
    if len(key) <= limit:
        return key
    return hashlib.sha256(key.encode()).hexdigest()[:limit]


@attrs.frozen
class Reply:
    status: int
    body: object  # parsed JSON, or None when the body was not JSON
    headers: Mapping[str, str]


class SecretPathTransport(httpx.AsyncBaseTransport):
    """Puts a secret into the URL path only on the wire (Telegram's `/bot<token>/`).

    The client builds URLs with a placeholder, so httpx's own log lines, exception messages
    and `request.url` never hold the token; only the request handed to the real transport does.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, placeholder: str, secret: str) -> None:
        self._inner = inner
        self._placeholder = placeholder.encode()
        self._secret = secret.encode()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raw_path = request.url.raw_path.replace(self._placeholder, self._secret)
        wire = httpx.Request(
            request.method,
            request.url.copy_with(raw_path=raw_path),
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )
        return await self._inner.handle_async_request(wire)

    async def aclose(self) -> None:
        await self._inner.aclose()


def new_ssl_context() -> ssl.SSLContext:
    return httpx.create_ssl_context()


def make_transport(ssl_context: ssl.SSLContext | None) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(verify=ssl_context if ssl_context is not None else True, retries=0)


@attrs.define
class JsonClient:
    """POSTs JSON to one account's base URL and hands back a `Reply`, or an `Outcome` when no
    reply came. Never raises for network trouble; only cancellation passes through."""

    client: httpx.AsyncClient
    secrets: tuple[str, ...] = ()

    @classmethod
    def open(
        cls,
        base_url: str,
        transport: httpx.AsyncBaseTransport,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> JsonClient:
        client = httpx.AsyncClient(
            base_url=base_url, transport=transport, headers=dict(headers or {}), timeout=DEFAULT_TIMEOUT
        )
        return cls(client, tuple(s for s in secrets if s))

    async def post(self, path: str, body: Any, *, headers: Mapping[str, str] | None = None) -> Reply | Outcome:
        content = json.dumps(body, ensure_ascii=False).encode()
        wire_headers = {"Content-Type": "application/json; charset=utf-8", **(headers or {})}
        try:
            response = await self.client.post(path, content=content, headers=wire_headers)
        except httpx.TimeoutException as exc:
            return self.clean(transport_error("timeout", type(exc).__name__))
        except httpx.HTTPError as exc:
            return self.clean(transport_error(type(exc).__name__, str(exc)))
        return Reply(response.status_code, _json_or_none(response), response.headers)

    async def send(
        self, path: str, body: Any, classify: Classifier, *, headers: Mapping[str, str] | None = None
    ) -> Outcome:
        """POST and classify in one step, for the channels whose send is one request."""
        reply = await self.post(path, body, headers=headers)
        if isinstance(reply, Outcome):
            return reply
        return self.clean(classify(reply.status, reply.body, reply.headers))

    def clean(self, outcome: Outcome) -> Outcome:
        """The outcome with every secret of this account removed from its reason."""
        cleaned = short(scrub(outcome.reason, self.secrets))
        return outcome if cleaned == outcome.reason else attrs.evolve(outcome, reason=cleaned)

    async def aclose(self) -> None:
        await self.client.aclose()


def _json_or_none(response: httpx.Response) -> object:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


# --- the long polls the listeners make -----------------------------------------------------------


def _encoded(body: Any, form: bool) -> tuple[bytes, dict[str, str]]:
    if form:
        return urllib.parse.urlencode(body).encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    return json.dumps(body, ensure_ascii=False).encode(), {"Content-Type": "application/json; charset=utf-8"}


async def post_json(client: JsonClient, path: str, body: Any, *, read_seconds: float, form: bool = False) -> Any:
    """POST `body` (JSON, or with `form` a form, as some methods want it) and return the parsed
    JSON answer. 401/403 raise `AuthFailed`, anything else that is not a 2xx JSON answer raises
    `ListenError`; secrets never reach the reason."""
    content, headers = _encoded(body, form)
    timeout = httpx.Timeout(read_seconds, connect=10.0)
    try:
        response = await client.client.post(path, content=content, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ListenError(scrub(f"{type(exc).__name__}: {exc}", client.secrets)) from None
    if response.status_code in (401, 403):
        raise AuthFailed(f"HTTP {response.status_code}")
    if not 200 <= response.status_code < 300:
        raise ListenError(f"HTTP {response.status_code}")
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        raise ListenError(f"HTTP {response.status_code}: answer is not JSON") from None
