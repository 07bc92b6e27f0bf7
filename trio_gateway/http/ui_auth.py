"""Who may use the Control UI (SPEC 13): a browser session cookie, obtained once.

The page never keeps the admin token. It trades either the token (typed once) or a one-time
code (printed by `trio-gateway dashboard`) for a random session id in an HttpOnly,
SameSite=Strict cookie, which then authenticates the page's API calls as the bearer token
would. Cross-site request forgery: a SameSite=Strict cookie is not sent on cross-site
requests, and a cookie-authenticated request that changes anything must also come from the
gateway's own origin (`Origin`, else `Sec-Fetch-Site`), so a forged form post or fetch from
another site is refused even by a browser that ignores SameSite.

Sessions and codes live in memory: a process restart logs the page out, an in-process
generation restart does not.
"""

from __future__ import annotations

import hmac
import secrets
import urllib.parse
from collections.abc import Callable, Mapping

import attrs
import trio

from trio_gateway.errors import UnauthorizedError
from trio_gateway.http import auth

_COOKIE = "tg_session"
CODE_TTL_SECONDS = 120.0
_SESSION_TTL_SECONDS = 12 * 3600.0
# A bound on what a stream of logins can make us remember; the oldest go first.
_MAX_SESSIONS = 64
_MAX_CODES = 16
_SAFE_METHODS = ("GET", "HEAD")


def _cookies(headers: Mapping[str, str]) -> dict[str, str]:
    found = {}
    for part in headers.get("cookie", "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            found[name] = value
    return found


def same_origin(headers: Mapping[str, str]) -> bool:
    """True when the browser says the request comes from a page of this very origin: host and
    scheme (`http`, or what a TLS-terminating proxy says in `X-Forwarded-Proto`), so a page
    served over plain HTTP on the same host cannot act for the HTTPS one."""
    origin = headers.get("origin")
    if origin is not None:
        parts = urllib.parse.urlsplit(origin)
        scheme = headers.get("x-forwarded-proto", "http").strip().lower()
        return parts.scheme == scheme and parts.netloc == headers.get("host", "")
    fetch_site = headers.get("sec-fetch-site")
    return fetch_site in ("same-origin", "none")


def _remember(table: dict[str, float], key: str, expires: float, limit: int) -> None:
    table[key] = expires
    while len(table) > limit:
        del table[min(table, key=table.__getitem__)]


@attrs.define(eq=False)
class UiAuth:
    token: str
    clock: Callable[[], float] = trio.current_time
    _codes: dict[str, float] = attrs.Factory(dict)
    _sessions: dict[str, float] = attrs.Factory(dict)

    def new_code(self) -> str:
        code = secrets.token_urlsafe(18)
        _remember(self._codes, code, self.clock() + CODE_TTL_SECONDS, _MAX_CODES)
        return code

    def login(self, *, code: str | None, token: str | None) -> str:
        """A new session id for a valid one-time code (used up) or the admin token."""
        if code is not None:
            expires = self._codes.pop(code, None)
            if expires is None or expires < self.clock():
                raise UnauthorizedError("unknown or expired login code; run `trio-gateway dashboard` again")
        elif token is None or not hmac.compare_digest(token.strip().encode(), self.token.encode()):
            raise UnauthorizedError("wrong admin token")
        session = secrets.token_urlsafe(32)
        _remember(self._sessions, session, self.clock() + _SESSION_TTL_SECONDS, _MAX_SESSIONS)
        return session

    def logout(self, headers: Mapping[str, str]) -> None:
        self._sessions.pop(_cookies(headers).get(_COOKIE, ""), None)

    def _cookie_valid(self, headers: Mapping[str, str]) -> bool:
        given = _cookies(headers).get(_COOKIE)
        if not given:
            return False
        expires = self._sessions.get(given)
        return expires is not None and expires >= self.clock()

    def still(self, headers: Mapping[str, str]) -> Callable[[], bool]:
        """Whether the login a request came with still holds, asked again later (an open event
        stream, at every tick): a cookie session until it logs out or expires; the bearer
        token (checked already) for good."""
        if headers.get("authorization") or not self._cookie_valid(headers):
            return lambda: True
        return lambda: self._cookie_valid(headers)

    def check(self, method: str, headers: Mapping[str, str]) -> None:
        """The bearer token as before; or the session cookie, from our own origin when the
        request changes anything."""
        if headers.get("authorization") or not self._cookie_valid(headers):
            auth.check_bearer(headers, self.token)
            return
        if method not in _SAFE_METHODS and not same_origin(headers):
            raise UnauthorizedError("cross-origin request with the UI session cookie refused")


def set_cookie(session: str, *, secure: bool) -> bytes:
    attributes = f"{_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={int(_SESSION_TTL_SECONDS)}"
    return (attributes + ("; Secure" if secure else "")).encode()


def clear_cookie() -> bytes:
    return f"{_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0".encode()
