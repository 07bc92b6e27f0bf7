"""The CLI's way to a running gateway: `gateway.state.json` says where, `gateway.token` says
who we are, and every error the API answers comes back as the same `GatewayError` the
gateway raised (so `ErrorName: message` and the exit code match what happened there).

The transport is a plain socket speaking HTTP/1.1 with `Connection: close`, one loopback
connection per call: the admin API is a handful of small JSON requests to 127.0.0.1, answered
by our own server (always with a Content-Length). Importing httpx or httpx2 (httpcore, h11,
anyio, certifi, ssl) cost more than the rest of a CLI command together, and even the standard
library's http.client (email.parser, ssl) was the largest part of `gateway status`'s CPU time
(scripts/bench_cli.py). Upstream calls keep httpx2 (`upstream.py`).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from trio_gateway import errors
from trio_gateway.errors import GatewayError, GatewayUnreachableError
from trio_gateway.storage.home import Home, read_token, token_path

# Every API call is quick (a drain is followed by polling, never by one long request).
REQUEST_TIMEOUT_SECONDS = 10.0

_KNOWN_ERRORS: dict[str, type[GatewayError]] = {
    cls.__name__: cls
    for cls in (v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, GatewayError))
}


def unreachable(home: Home, why: str = "") -> GatewayUnreachableError:
    detail = f" ({why})" if why else ""
    return GatewayUnreachableError(
        f"no gateway running for home {home.root}{detail} (start one with: trio-gateway gateway start)"
    )


def nothing_running(home: Home) -> bool:
    """No gateway serves this home: no state file, or the process it names is gone. (A live
    process that does not answer is not "nothing": that is a failure to report.)"""
    try:
        pid = json.loads(home.state_path.read_text(encoding="utf-8")).get("pid")
    except (FileNotFoundError, ValueError, AttributeError):
        return True
    return not (isinstance(pid, int) and pid_alive(pid))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that pid: it exists
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """An exited process its parent has not reaped yet still answers `kill(pid, 0)`; for us it
    is gone (it will never serve again)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False  # no procfs (or it vanished just now): trust kill()
    return stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"])


def remote_error(status: int, body: bytes) -> GatewayError:
    """Rebuild the gateway's error from its `{"error", "message"}` body."""
    try:
        data = json.loads(body)
        name, message = str(data["error"]), str(data["message"])
    except (ValueError, KeyError, TypeError):
        return GatewayError(f"HTTP {status} from the gateway: {body[:200]!r}")
    cls = _KNOWN_ERRORS.get(name)
    if cls is None:
        return GatewayError(f"{name}: {message}")
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)  # bypass subclass __init__s that take structured fields
    return exc


class Target(NamedTuple):  # NamedTuples, not attrs: the CLI's light path (see home.py)
    home: Home
    pid: int
    url: str
    state: str
    generation: int

    @classmethod
    def find(cls, home: Home) -> Target:
        try:
            data = json.loads(home.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise unreachable(home) from None
        except ValueError:
            raise unreachable(home, f"{home.state_path} is unreadable") from None
        pid, url = data.get("pid"), data.get("url")
        if not isinstance(pid, int) or not pid_alive(pid):
            raise unreachable(home, f"the gateway recorded in {home.state_path.name} is not running")
        if not isinstance(url, str):
            raise unreachable(home, "the gateway is still starting; try again in a moment")
        return cls(home, pid, url, str(data.get("state")), int(data.get("generation") or 0))

    def alive(self) -> bool:
        return pid_alive(self.pid)


class GatewayClient:
    """Calls to one gateway's admin API. A plain class: the token stays out of any repr."""

    __slots__ = ("target", "token")

    def __init__(self, target: Target, token: str) -> None:
        self.target = target
        self.token = token

    @classmethod
    def connect(cls, home: Home) -> GatewayClient:
        target = Target.find(home)
        path = token_path(home.token_path, os.environ)
        token = read_token(path)
        if token is None:
            raise unreachable(home, f"{path} is missing")
        return cls(target, token)

    def close(self) -> None:
        pass  # one connection per call: nothing held between calls

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            status, content = self._exchange(method, path, body)
        except OSError as exc:  # refused, reset, timed out, or not HTTP (BadResponseError)
            why = "the gateway exited" if not self.target.alive() else f"{type(exc).__name__}: {exc}"
            raise unreachable(self.target.home, why) from None
        if status >= 400:
            raise remote_error(status, content)
        return json.loads(content)

    def _exchange(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
        # No proxy from the environment can see these calls: the socket dials the URL itself.
        url = urlsplit(self.target.url)
        payload = b"" if body is None else json.dumps(body).encode()
        head = [
            f"{method} {url.path.rstrip('/')}{path} HTTP/1.1",
            f"Host: {url.netloc}",
            f"Authorization: Bearer {self.token}",
            "Connection: close",
            f"Content-Length: {len(payload)}",
        ]
        if body is not None:
            head.append("Content-Type: application/json")
        address = (url.hostname or "127.0.0.1", url.port or 80)
        with socket.create_connection(address, timeout=REQUEST_TIMEOUT_SECONDS) as sock:
            sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return parse_response(b"".join(chunks))

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.call("POST", path, body or {})


class BadResponseError(OSError):
    """What came back is not an HTTP response we can read."""


def parse_response(raw: bytes) -> tuple[int, bytes]:
    """(status, body) of a whole HTTP/1.x response read to EOF (`Connection: close`)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if not sep or len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise BadResponseError(f"not an HTTP response: {raw[:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return int(parts[1]), _dechunk(body)
    if headers.get("content-length", "").isdigit():
        length = int(headers["content-length"])
        if len(body) < length:
            raise BadResponseError(f"response cut short: {len(body)} of {length} bytes")
        body = body[:length]
    return int(parts[1]), body


def _dechunk(body: bytes) -> bytes:
    out: list[bytes] = []
    while True:
        size_line, sep, rest = body.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            raise BadResponseError("bad chunk size in a chunked response") from None
        if not sep or size == 0:
            return b"".join(out)
        out.append(rest[:size])
        body = rest[size + 2 :]
