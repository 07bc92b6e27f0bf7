"""The fake Slack: its Web API `chat.postMessage` (`SlackFake`) and a Socket Mode server
(SPEC 11; `FakeSlackSocket`), the websocket side of `FakeChannels` for `slack`.

`connect(url)` serves a real trio-websocket connection over in-memory streams: `hello`, then an
`events_api` envelope per `push`. Envelopes not acknowledged (`{"envelope_id"}`) are sent again
on the next connection with `retry_attempt` + 1, as Slack does: that is how a test shows an ack
comes only after the turn is durable. Steering: `push(text, channel)`, `drop_connection()`,
`disconnect(reason)` (a `disconnect` envelope), `reject_auth()` (`apps.connections.open` answers
`invalid_auth`).
"""

from __future__ import annotations

import itertools
import json
import re
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio
import trio_websocket

from trio_gateway.sim.fake_inbound import SteerableSocket, in_memory_websocket
from trio_gateway.sim.fake_platform import (
    DIRECT,
    Delivered,
    FakeRequest,
    FakeResponse,
    FakeServer,
    Json,
    Params,
    Rule,
    SocketFake,
    Speech,
    bearer,
    body_dict,
    retry_after_header,
)

HOST = "slack.fake.invalid"
# The fake app's bot user: `<@U0FAKEBOT>` mentions it.
BOT_USER = "U0FAKEBOT"


@attrs.define
class FakeSlackSocket(SteerableSocket):
    envelopes: list[dict[str, Any]] = attrs.Factory(list)
    acked: set[str] = attrs.Factory(set)
    _disconnects: list[str] = attrs.Factory(list)
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def push(self, text: str, channel: str | None = None, *, bot: bool = False, speech: Speech = DIRECT) -> str:
        """A `message` event (in a direct chat unless `speech.group`); one mentioning the bot
        comes twice, as `message` and as `app_mention`, as Slack sends it to an app subscribed
        to both. Returns the (first) event id."""
        n = next(self._ids)
        where = speech.group or channel or "C0FAKE0001"
        event: dict[str, Any] = {"type": "message", "channel": where, "user": speech.user or "U0FAKE",
                                 "text": f"<@{BOT_USER}> {text}" if speech.mention else text,
                                 "ts": f"{1_700_000_000 + n}.000100",
                                 "channel_type": "channel" if speech.group else "im"}  # fmt: skip
        if bot:
            event["bot_id"] = "B0FAKE"
        if speech.thread is not None:
            event["thread_ts"] = speech.thread
        if speech.media:
            event.update(subtype="file_share", files=[{"id": f"F{n:08d}", "mimetype": "image/png"}])
        if speech.edited:
            event["subtype"] = "message_changed"
        first = self._envelope(n, event)
        if speech.mention:
            mention = {k: v for k, v in event.items() if k != "channel_type"}
            self._envelope(n, {**mention, "type": "app_mention"}, "m")
        return first

    def _envelope(self, n: int, event: dict[str, Any], suffix: str = "") -> str:
        event_id = f"Ev{n:08d}{suffix}"
        payload = {"type": "event_callback", "event_id": event_id, "event": event,
                   "authorizations": [{"user_id": BOT_USER, "is_bot": True}]}  # fmt: skip
        self.envelopes.append({"envelope_id": f"env-{n}{suffix}", "type": "events_api", "payload": payload,
                               "accepts_response_payload": False, "retry_attempt": 0})  # fmt: skip
        self._wake()
        return event_id

    def unacked(self) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["envelope_id"] not in self.acked]

    def disconnect(self, reason: str = "refresh_requested") -> None:
        self._disconnects.append(reason)
        self._wake()

    def connections_open_answer(self) -> dict[str, Any]:
        """What `apps.connections.open` answers."""
        if self.auth_rejected:
            return {"ok": False, "error": "invalid_auth"}
        return {"ok": True, "url": f"wss://{HOST}/link/?ticket=fake-{self.connections + 1}"}

    def connect(self, url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        return in_memory_websocket(HOST, "/link/", self._serve)

    async def _stream(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        drops = self._drops
        await ws.send_message(json.dumps({"type": "hello", "num_connections": 1}))
        sent: set[str] = set()
        for envelope in self.unacked():  # what the last connection left unacknowledged
            await ws.send_message(json.dumps({**envelope, "retry_attempt": envelope["retry_attempt"] + 1}))
            sent.add(envelope["envelope_id"])
        while self._drops == drops:
            changed = self._changed
            for envelope in self.unacked():
                if envelope["envelope_id"] not in sent:
                    await ws.send_message(json.dumps(envelope))
                    sent.add(envelope["envelope_id"])
            if self._disconnects:
                await ws.send_message(json.dumps({"type": "disconnect", "reason": self._disconnects.pop(0)}))
            await changed.wait()
        await stream.aclose()  # dropped without a close frame

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame = json.loads(await ws.get_message())
            if isinstance(frame, dict) and isinstance(frame.get("envelope_id"), str):
                self.acked.add(frame["envelope_id"])


# --- the Web API ---------------------------------------------------------------------------------

NAME = "slack"


# chat.postMessage's `text` limit: past it the real API truncates; `msg_too_long` is its refusal
# of a message too long to post, which the fake gives instead, so a test sees the overflow.
MAX_TEXT = 40_000


@attrs.define
class SlackFake(SocketFake):
    name = NAME
    routes = (
        (re.compile(r"/chat\.postMessage$"), "send"),
        (re.compile(r"/apps\.connections\.open$"), "connect"),
    )
    reject_default = (200, "channel_not_found", "")
    websocket_host = HOST
    socket: FakeSlackSocket = attrs.Factory(FakeSlackSocket)

    def error_body(self, code: Json, message: str) -> Json:
        return {"ok": False, "error": code}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        return FakeResponse(429, {"ok": False, "error": "ratelimited"}, retry_after_header(rule))

    async def answer_any_method(
        self, server: FakeServer, request: FakeRequest, op: str, params: Params
    ) -> FakeResponse | None:
        if op != "connect":
            return None
        if not bearer(request.headers):
            return FakeResponse(200, {"ok": False, "error": "not_authed"})
        return FakeResponse(200, self.socket.connections_open_answer())

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        if not server.credential_ok(NAME, bearer(request.headers)):
            return FakeResponse(200, {"ok": False, "error": "invalid_auth"})
        body = body_dict(request)
        if not body.get("channel"):
            return FakeResponse(200, {"ok": False, "error": "channel_not_found"})
        text = body.get("text")
        if not text or not isinstance(text, str):
            return FakeResponse(200, {"ok": False, "error": "no_text"})
        if len(text) > MAX_TEXT:
            return FakeResponse(200, {"ok": False, "error": "msg_too_long"})
        # What a person reads: mrkdwn's three escapes shown as the characters they stand for.
        shown = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
        server.messages.append(Delivered(NAME, body["channel"], shown))
        return FakeResponse(200, {"ok": True, "channel": body["channel"], "ts": f"{server.serial()}.000100"})
