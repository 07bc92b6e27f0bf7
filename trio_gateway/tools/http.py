"""The `http_request` tool (SPEC 14): one HTTP request to an allow-listed host, as an
`api_request` unit. Each received chunk is progress; the body is cut at `maxResponseBytes`
(reading stops there, so a huge reply costs no more than the cap), and the result as sent to the
model, JSON-escaped, is cut to fit `maxResponseBytes` + `RESULT_OVERHEAD_BYTES` (a NUL is six
characters escaped). The whole call has a deadline (`deadline_seconds`): every chunk is progress
to the stall watchdog, so a host dripping a byte at a time is cut by this, not by it. Goes
through the project's httpx2 client (`upstream.py`), whose cancellation closes the connection."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs
import trio

from trio_gateway import upstream as http
from trio_gateway.models.base import Progress
from trio_gateway.policy.config import HttpToolConfig

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
# RFC 9110 field names and values the client can send as they are (printable ASCII): anything
# else (CR/LF, NUL, non-ASCII) is refused here with a clear error instead of failing in the
# client, or reaching a server whose parser differs.
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
# Headers the client sets itself: `Host` picks the virtual host behind an allowed front end
# (one nobody allowed), and framing headers of the model's own can smuggle a second request.
CLIENT_HEADERS = frozenset(
    ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer", "upgrade")
)

HTTP_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "http_request",
        "description": "Make one HTTP request to an allowed host; returns status, headers and body (text).",
        "parameters": {
            "type": "object",
            "properties": {
                "method": {"type": "string", "enum": list(METHODS)},
                "url": {"type": "string"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "body": {"type": "string"},
            },
            "required": ["url"],
        },
    },
}


# Room in a result beyond the body's cap: status, keys and the headers (cut to `HEADER_BYTES`).
RESULT_OVERHEAD_BYTES = 8192
HEADER_BYTES = 4096


class DeniedError(Exception):
    """The request is not allowed (host, scheme, method, argument types): nothing was sent."""


class DeadlineError(Exception):
    """The request took longer than its whole-call deadline and was cut."""


@attrs.frozen
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: str | None


def _parse_request(args: dict[str, Any], config: HttpToolConfig) -> HttpRequest:
    method = args.get("method", "GET")
    url = args.get("url")
    headers = args.get("headers") or {}
    body = args.get("body")
    if not isinstance(method, str) or method.upper() not in METHODS:
        raise DeniedError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not isinstance(url, str):
        raise DeniedError("url must be a string")
    # The host checked is the one the client connects to: the client's own parse of the URL
    # (urllib and httpx2 disagree on some inputs, a tab in the authority for one).
    try:
        target = http.URL(url)
    except http.InvalidURL as exc:
        raise DeniedError(f"url is not valid ({exc}): {url[:200]!r}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise DeniedError(f"url must be an http(s) URL, got {url[:200]!r}")
    if target.host not in config.allow_hosts:
        raise DeniedError(f"host {target.host!r} is not in tools.http.allowHosts")
    if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise DeniedError("headers must be an object of strings")
    for name, value in headers.items():
        if not HEADER_NAME.fullmatch(name) or not HEADER_VALUE.fullmatch(value):
            raise DeniedError(f"header {name[:60]!r}: names are tokens and values printable ASCII")
        if name.lower() in CLIENT_HEADERS or name.lower().startswith("proxy-"):
            raise DeniedError(f"header {name!r} is set by the gateway's client, not by the model")
    if body is not None and not isinstance(body, str):
        raise DeniedError("body must be a string")
    return HttpRequest(method.upper(), url, headers, body)


@attrs.define(eq=False)
class HttpTool:
    config: HttpToolConfig
    client: http.AsyncClient
    deadline_seconds: float

    async def call(self, args: dict[str, Any], progress: Progress) -> str:
        """The tool's answer as JSON text. `DeniedError` before anything is sent,
        `DeadlineError` past the deadline; httpx2 errors propagate (the caller turns them into
        a tool error)."""
        request = _parse_request(args, self.config)
        with trio.move_on_after(self.deadline_seconds):
            return await self._exchange(request, progress)
        raise DeadlineError(f"no whole answer within {self.deadline_seconds:g}s; the request was cut")

    async def _exchange(self, request: HttpRequest, progress: Progress) -> str:
        cap = self.config.max_response_bytes
        progress("api_request:sending")
        async with self.client.stream(
            request.method, request.url, headers=request.headers, content=request.body
        ) as response:
            progress("api_request:headers")
            body = bytearray()
            truncated = False
            async for chunk in response.aiter_bytes():
                progress("api_request:chunk")
                body += chunk
                if len(body) > cap:
                    del body[cap:]
                    truncated = True
                    break
        result = {
            "status": response.status_code,
            "headers": _headers(response.headers.multi_items()),
            "body": body.decode("utf-8", "replace"),
            "truncated": truncated,
        }
        return fit(result, cap + RESULT_OVERHEAD_BYTES)

    async def aclose(self) -> None:
        await self.client.aclose()


def _headers(items: list[tuple[str, str]]) -> dict[str, str]:
    """The answer's headers, as many as fit in `HEADER_BYTES` (a header flood is cut)."""
    kept: dict[str, str] = {}
    size = 0
    for name, value in items:
        size += len(name) + len(value) + 6
        if size > HEADER_BYTES:
            break
        kept[name] = value
    return kept


def fit(result: dict[str, Any], limit: int) -> str:
    """`result` as JSON of at most `limit` UTF-8 bytes, its body cut (and `truncated` set)
    until it fits: the cap holds for what the model is sent, after escaping."""
    text = json.dumps(result, ensure_ascii=False)
    body: str = result["body"]
    while len(text.encode()) > limit and body:
        escaped = len(json.dumps(body, ensure_ascii=False).encode()) - 2
        over = len(text.encode()) - limit
        # Bytes per character as escaped: cut enough characters for the excess, one more.
        keep = max(0, len(body) - int(over * len(body) / max(escaped, 1)) - 1)
        body = body[:keep]
        result = {**result, "body": body, "truncated": True}
        text = json.dumps(result, ensure_ascii=False)
    return text
