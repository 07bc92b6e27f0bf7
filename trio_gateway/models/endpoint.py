"""What every HTTP model provider shares: one reused client per model entry, its API key kept out
of every error text, progress from the HTTP library's trace hook, an upstream's refusal turned
into a `ModelCallError` that says whether another model may answer instead (SPEC 16), and the
server-sent events both streaming protocols use.

`request_timeout_seconds` bounds inactivity (connect, each read, each write, the wait for a pool
slot), never the whole call: a stream that keeps moving runs as long as it moves. Whole-call
limits are the stall watchdog's and the drain's, by cancelling the unit's scope; the response is
then closed by `async with`, which closes its upstream connection (tests/test_http_pool.py).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import trio

from trio_gateway import upstream as http
from trio_gateway.errors import ModelCallError
from trio_gateway.models.base import ModelReply, Progress
from trio_gateway.policy.config import ModelConfig

ERROR_SNIPPET_CHARS = 200
# Concurrent calls per model endpoint. Calls beyond it wait in trio (a Semaphore), not in the
# connection pool: cancelling a waiter in httpcore's pool queue scans the whole pool, so a
# drain that aborts 10,000 queued calls there took seconds (scripts/bench_restart.py).
MAX_CONCURRENT_CALLS = 100
_ERROR_BODY_LIMIT = 4096
# SPEC 16: a rate limit, an overload or a server error may be answered by the next model.
_FAILOVER_BY_STATUS = {408: "timeout", 429: "rate_limited", 503: "overloaded", 529: "overloaded"}

ReadReply = Callable[[http.Response, Progress], Awaitable[ModelReply]]


class Endpoint:
    """One model entry's HTTP side. `auth` turns the API key into the provider's headers."""

    def __init__(
        self,
        config: ModelConfig,
        env: Mapping[str, str],
        transport: http.AsyncBaseTransport | None,
        auth: Callable[[str], dict[str, str]],
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self._key = env.get(config.api_key_env) if config.api_key_env else None
        all_headers = {**(headers or {}), **(auth(self._key) if self._key else {})}
        # One timeout value for every phase: each is a bound on silence, not on total duration.
        timeout = http.Timeout(config.request_timeout_seconds)
        limits = http.Limits(max_connections=MAX_CONCURRENT_CALLS, max_keepalive_connections=20)
        # Every answer capped, streamed or not: a model that never stops costs the cap.
        network = transport if transport is not None else http.AsyncHTTPTransport(limits=limits, retries=0)
        self._client = http.AsyncClient(
            headers=all_headers, timeout=timeout, transport=http.bounded(network, http.MODEL_BODY_BYTES)
        )
        self._slots = trio.Semaphore(MAX_CONCURRENT_CALLS)

    async def call(self, url: str, payload: dict[str, Any], progress: Progress, read: ReadReply) -> ModelReply:
        """POST `payload`, hand a successful response to `read`; every failure a `ModelCallError`."""
        self._check_key()
        progress("model_call:waiting_for_slot")
        try:
            async with self._slots:
                # Getting a slot is progress: the stall clock measures the upstream's silence,
                # not the time spent queued behind other calls.
                progress("model_call:slot_acquired")
                return await self._exchange(url, payload, progress, read)
        except http.TimeoutException as exc:
            seconds = self.config.request_timeout_seconds
            raise ModelCallError(
                f"model upstream silent for {seconds:g}s ({type(exc).__name__})", failover="timeout"
            ) from None
        except http.BodyTooLarge as exc:
            raise ModelCallError(f"model upstream answer cut: {exc}") from None
        except http.TransportError as exc:
            raise ModelCallError(
                f"model upstream unreachable: {type(exc).__name__}: {self.scrub(str(exc))}", failover="unreachable"
            ) from None

    async def _exchange(self, url: str, payload: dict[str, Any], progress: Progress, read: ReadReply) -> ModelReply:
        trace = _progress_trace(progress)
        async with self._client.stream("POST", url, json=payload, extensions={"trace": trace}) as response:
            progress("model_call:headers")
            if not response.is_success:
                raise await self._status_error(response)
            return await read(response, progress)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _check_key(self) -> None:
        if self.config.api_key_env and not self._key:
            raise ModelCallError(f"environment variable {self.config.api_key_env} is not set")

    async def _status_error(self, response: http.Response) -> ModelCallError:
        body = b""
        # Bounded read: an error page can be large and we only quote its start.
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) >= _ERROR_BODY_LIMIT:
                break
        snippet = " ".join(body.decode("utf-8", "replace").split())[:ERROR_SNIPPET_CHARS]
        status = response.status_code
        return ModelCallError(
            f"model upstream answered HTTP {status}: {self.scrub(snippet)}",
            failover=failover_for_status(status),
            retry_after=retry_after(response.headers.get("retry-after")),
        )

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def failover_for_status(status: int) -> str | None:
    """Why another model may answer after this HTTP status; None when it would fail the same way."""
    if status in _FAILOVER_BY_STATUS:
        return _FAILOVER_BY_STATUS[status]
    return "server_error" if status >= 500 else None


def retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _progress_trace(progress: Progress) -> Any:
    """The HTTP library's trace hook, turned into progress labels the watchdog can report."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("connect_tcp.complete"):
            progress("model_call:connected")
        elif event.endswith("send_request_body.complete"):
            progress("model_call:request_sent")

    return trace


def is_event_stream(response: http.Response) -> bool:
    # Some servers ignore `stream: true` and answer with one JSON body: accept either.
    return response.headers.get("content-type", "").startswith("text/event-stream")


def parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise ModelCallError("model upstream sent something that is not JSON") from None


def shape(body: Any) -> str:
    """The start of a body for an error message."""
    return json.dumps(body)[:ERROR_SNIPPET_CHARS] if isinstance(body, dict | list) else type(body).__name__


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream. Comments (`: keep-alive`), event
    names and blank separators are skipped: they are not content, so never progress."""
    async for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()
