"""The one place that picks the HTTP client library for upstream calls.

Everything that talks HTTP to an upstream imports these names from here, never `httpx` or
`httpx2` directly, so the choice (and a later switch back) is one line.

Decision: httpx2 (the maintained fork; same API). tests/test_http_pool.py runs the same
abort-under-contention tests against both libraries on real loopback sockets: with httpx 0.28.1 /
httpcore 1.0.9, calls aborted at scattered moments while the pool is contended leak connection
slots (httpcore issue #1093) until every later call gets `PoolTimeout`; httpcore2 reclaims them.
Stall aborts hit calls at any moment, so the gateway cannot live with the leak.
"""

from __future__ import annotations

from httpx2 import (
    URL,
    AsyncBaseTransport,
    AsyncByteStream,
    AsyncClient,
    AsyncHTTPTransport,
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

__all__ = [
    "LIBRARY",
    "URL",
    "AsyncBaseTransport",
    "AsyncByteStream",
    "AsyncClient",
    "AsyncHTTPTransport",
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
    "create_ssl_context",
]
