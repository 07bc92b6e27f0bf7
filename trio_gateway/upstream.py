"""The one place that picks the HTTP client library for upstream calls.

Everything that talks HTTP to an upstream imports these names from here, never `httpx` or
`httpx2` directly, so the choice (and a later switch back) is one line.

Decision: httpx2 (the maintained fork; same API). tests/test_http_pool.py runs the same
abort-under-contention tests against both libraries on real loopback sockets: with httpx 0.28.1 /
httpcore 1.0.9, calls aborted at scattered moments while the pool is contended leak connection
slots (httpcore issue #1093) until every later call gets `PoolTimeout`; httpcore2 reclaims them.
Stall aborts hit calls at any moment, so the gateway cannot live with the leak.

Every answer read from outside has a cap (`BoundedTransport`): a platform, model, MCP server or
host that sends without end costs at most the cap, then the call fails with `BodyTooLarge`.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

from httpx2 import (
    URL,
    AsyncBaseTransport,
    AsyncByteStream,
    AsyncClient,
    AsyncHTTPTransport,
    ConnectError,
    DecodingError,
    HTTPError,
    HTTPStatusError,
    InvalidURL,
    Limits,
    MockTransport,
    ReadTimeout,
    RemoteProtocolError,
    Request,
    Response,
    Timeout,
    TimeoutException,
    TransportError,
    create_ssl_context,
)

LIBRARY = "httpx2"

# The caps, by who answers. A long poll carries at most a hundred messages of a few KiB; a model
# reply (even streamed, every chunk counted) is text plus tool calls; an MCP server's one
# response holds one JSON-RPC message (the stdio cap) and a few notifications.
CHANNEL_BODY_BYTES = 8 * 1024 * 1024
MODEL_BODY_BYTES = 32 * 1024 * 1024
MCP_BODY_BYTES = 16 * 1024 * 1024

# What the capped stream decodes itself (so the cap counts what is held, never a compressed
# size a bomb multiplies); anything else is refused rather than handed to an uncapped decoder.
_DECODED = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}


class BodyTooLarge(TransportError):
    """An answer went past its cap: reading stopped there and the connection was closed."""


class _CappedStream(AsyncByteStream):
    """The answer's bytes, decoded, ending the read with `BodyTooLarge` past `limit`."""

    def __init__(self, inner: AsyncByteStream, limit: int, request: Request, encoding: str, cut: bool) -> None:
        self._inner = inner
        self._limit = limit
        self._request = request
        self._decoder = zlib.decompressobj(_DECODED[encoding]) if encoding else None
        self._encoding = encoding
        self._started = False
        self._cut = cut

    async def __aiter__(self) -> AsyncIterator[bytes]:
        held = 0
        async for raw in self._inner:
            # max_length one past what is left: a longer output means the cap is passed, and
            # zlib never produces more than that however much the chunk expands.
            chunk = self._decode(raw, self._limit - held + 1)
            if held + len(chunk) > self._limit:
                await self._inner.aclose()
                if not self._cut:
                    raise BodyTooLarge(f"the answer is over {self._limit} bytes", request=self._request)
                yield chunk[: self._limit - held]
                return
            held += len(chunk)
            yield chunk

    def _decode(self, raw: bytes, room: int) -> bytes:
        if self._decoder is None:
            return raw
        try:
            return self._decoder.decompress(raw, room)
        except zlib.error as exc:
            if self._encoding == "deflate" and not self._started:
                # Some servers send `deflate` without its zlib header (raw), as httpx allows.
                self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                self._started = True
                return self._decode(raw, room)
            raise DecodingError(f"the answer's content encoding is broken: {exc}", request=self._request) from None
        finally:
            self._started = True

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedTransport(AsyncBaseTransport):
    """`inner` with every answer's body capped at `limit` bytes (after decoding). The one
    bounded-body helper: every client that reads from outside is built on one. Past the cap
    the read fails with `BodyTooLarge`, or with `cut` simply ends there (a reader that keeps
    the start of what it was sent)."""

    def __init__(self, inner: AsyncBaseTransport, limit: int, *, cut: bool = False) -> None:
        self._inner = inner
        self.limit = limit
        self._cut = cut

    async def handle_async_request(self, request: Request) -> Response:
        request.headers["accept-encoding"] = "gzip, deflate"
        response = await self._inner.handle_async_request(request)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        if encoding in ("", "identity"):
            encoding = ""
        elif encoding not in _DECODED:
            await response.aclose()
            raise DecodingError(f"content-encoding {encoding[:40]!r} was not asked for", request=request)
        assert isinstance(response.stream, AsyncByteStream)
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
        return Response(
            response.status_code,
            headers=headers,
            stream=_CappedStream(response.stream, self.limit, request, encoding, self._cut),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


def bounded(inner: AsyncBaseTransport | None, limit: int, *, cut: bool = False) -> BoundedTransport:
    """`inner` (the network when None) capped at `limit` bytes per answer."""
    return BoundedTransport(inner if inner is not None else AsyncHTTPTransport(retries=0), limit, cut=cut)


__all__ = [
    "CHANNEL_BODY_BYTES",
    "LIBRARY",
    "MCP_BODY_BYTES",
    "MODEL_BODY_BYTES",
    "URL",
    "AsyncBaseTransport",
    "AsyncByteStream",
    "AsyncClient",
    "AsyncHTTPTransport",
    "BodyTooLarge",
    "BoundedTransport",
    "ConnectError",
    "DecodingError",
    "HTTPError",
    "HTTPStatusError",
    "InvalidURL",
    "Limits",
    "MockTransport",
    "ReadTimeout",
    "RemoteProtocolError",
    "Request",
    "Response",
    "Timeout",
    "TimeoutException",
    "TransportError",
    "bounded",
    "create_ssl_context",
]
