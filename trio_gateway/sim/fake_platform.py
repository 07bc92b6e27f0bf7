"""What the fake platforms share: the request and answer records, the rules a test sets, and
the two interfaces that tie one platform's fake (`fake_<platform>.py`) to the one server that
speaks them all (`fake_channels.FakeChannels`):

- `FakeServer`: what a platform's fake may use of that server (credentials, the record of
  messages a user would have seen, deduplication by key, ids, the long-poll server);
- `PlatformFake`: what the server asks of a platform's fake (its paths, its answers, its error
  forms, how a person writes to the bot and how the connection breaks).

Adding a platform's fake is its `fake_<platform>.py` with one `PlatformFake` and one entry in
`fake_channels.PLATFORMS`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar, Literal, Protocol

import attrs

from trio_gateway.sim.fake_inbound import DIRECT, FakeInbound, Speech, SteerableSocket

__all__ = ["DIRECT", "Speech"]

Json = Any
Action = Literal["reject", "fail", "rate_limit"]


@attrs.frozen
class FakeRequest:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: Json  # parsed JSON, None when not JSON
    at: float = 0.0  # trio time it arrived
    channel: str = ""
    op: str = ""


@attrs.frozen
class FakeResponse:
    status: int
    body: Json
    headers: Mapping[str, str] = attrs.Factory(dict)

    def encode(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


@attrs.frozen
class Delivered:
    """A message a user would have seen: what arrived and was accepted, once per idempotency key."""

    channel: str
    to: str
    text: str
    key: str | None = None


@attrs.define
class Rule:
    action: Action
    remaining: int | None  # None: until the next `accept()`
    status: int | None = None
    code: Json = None
    message: str | None = None
    retry_after: float | None = None


def bad(status: int, body: Json) -> FakeResponse:
    return FakeResponse(status, body)


def bearer(headers: Mapping[str, str], scheme: str = "Bearer") -> str | None:
    value = headers.get("authorization", "")
    prefix = f"{scheme} "
    return value[len(prefix) :] if value.startswith(prefix) and len(value) > len(prefix) else None


def number_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def retry_after_header(rule: Rule) -> dict[str, str]:
    """`Retry-After` with the rule's wait (1 s when it names none), as most platforms send it."""
    return {"Retry-After": number_text(rule.retry_after if rule.retry_after is not None else 1.0)}


def body_dict(request: FakeRequest) -> dict[str, Json]:
    return request.body if isinstance(request.body, dict) else {}


class FakeServer(Protocol):
    """What a platform's fake uses of the server that holds it."""

    messages: list[Delivered]
    inbound: FakeInbound

    def credential_ok(self, channel: str, given: str | None) -> bool: ...

    def once(self, channel: str, key: str | None, delivered: Delivered, answer: Json) -> Json:
        """Record the message unless its key was seen; a repeat gets the first answer back."""

    def next_id(self) -> str:
        """A fresh snowflake-sized id."""

    def serial(self) -> int:
        """A fresh small number (message ids, tokens)."""


Params = dict[str, str]


class PlatformFake:
    """One platform's fake, as the server asks it. Subclasses set the class attributes and
    `answer`; the rest has the common behaviour."""

    name: ClassVar[str]
    # (path pattern, operation), matched at the end of the path so a base URL with a prefix
    # (`/api`, `/api/v10`) works too.
    routes: ClassVar[tuple[tuple[re.Pattern[str], str], ...]]
    # (HTTP status, code, message) a rejection uses when the test names none.
    reject_default: ClassVar[tuple[int, Json, str]]
    # The host of the websocket URL its listener connects to, when it listens on one.
    websocket_host: ClassVar[str | None] = None

    @classmethod
    def account_keys(cls, env_prefix: str) -> dict[str, str]:
        """The keys an account of this platform needs besides `baseUrl`, its secrets named by
        environment variables under `env_prefix`: a bot token, unless the platform says more."""
        return {"tokenEnv": f"{env_prefix}_TOKEN"}

    def error_body(self, code: Json, message: str) -> Json:
        """The platform's own error form."""
        raise NotImplementedError

    def rejection(self, rule: Rule) -> FakeResponse:
        default_status, default_code, default_message = self.reject_default
        code = default_code if rule.code is None else rule.code
        message = default_message if rule.message is None else rule.message
        headers = {"Retry-After": number_text(rule.retry_after)} if rule.retry_after is not None else {}
        return FakeResponse(rule.status or default_status, self.error_body(code, message), headers)

    def rate_limited(self, rule: Rule) -> FakeResponse:
        raise NotImplementedError

    async def answer_any_method(
        self, server: FakeServer, request: FakeRequest, op: str, params: Params
    ) -> FakeResponse | None:
        """Operations answered whatever the method, before the send rules (a listener's own
        endpoints); None: not one of them."""
        return None

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        """A POST to one of `routes`."""
        raise NotImplementedError

    # --- the listening side (SPEC 11) ---

    def push(
        self,
        server: FakeServer,
        text: str,
        sender: str | None,
        context_token: str | None,
        bot: bool,
        speech: Speech = DIRECT,
    ) -> str:
        """A person (or, with `bot`, a bot) writes `text`, as `speech` says; returns the
        platform's id for it."""
        raise NotImplementedError

    def drop_connection(self, server: FakeServer) -> None:
        raise NotImplementedError

    def reject_auth(self, server: FakeServer) -> None:
        raise NotImplementedError

    def accept_auth(self, server: FakeServer) -> None:
        raise NotImplementedError

    def connect(self, url: str) -> AbstractAsyncContextManager[Any]:
        raise NotImplementedError(f"{self.name} has no websocket")


class LongPollFake(PlatformFake):
    """A platform whose listener long-polls: its messages wait in the server's `FakeInbound`."""

    def drop_connection(self, server: FakeServer) -> None:
        server.inbound.drop_connection(self.name)

    def reject_auth(self, server: FakeServer) -> None:
        server.inbound.reject_auth(self.name)

    def accept_auth(self, server: FakeServer) -> None:
        server.inbound.accept_auth(self.name)


class SocketFake(PlatformFake):
    """A platform whose listener holds a websocket, served by its `socket`."""

    socket: SteerableSocket

    def drop_connection(self, server: FakeServer) -> None:
        self.socket.drop_connection()

    def reject_auth(self, server: FakeServer) -> None:
        self.socket.reject_auth()

    def accept_auth(self, server: FakeServer) -> None:
        self.socket.accept_auth()

    def push(
        self,
        server: FakeServer,
        text: str,
        sender: str | None,
        context_token: str | None,
        bot: bool,
        speech: Speech = DIRECT,
    ) -> str:
        return self.socket.push(text, sender, bot=bot, speech=speech)

    def connect(self, url: str) -> AbstractAsyncContextManager[Any]:
        return self.socket.connect(url)
