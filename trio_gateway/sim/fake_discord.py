"""The fake Discord: its REST API (DM channels, messages deduplicated by nonce; `DiscordFake`)
and a fake Gateway (SPEC 11; `FakeDiscordGateway`), the websocket side of `FakeChannels`.

`connect(url)` is the listener's websocket seam: a real trio-websocket connection over an
in-memory stream pair (no sockets, so MockClock tests run instantly), served here:
HELLO → IDENTIFY (READY, a new session) or RESUME (the missed dispatches replayed, RESUMED) →
heartbeats acknowledged → MESSAGE_CREATE for every `push`. Steering: `push(text, channel_id)`,
`drop_connection()` (the socket dies without a close frame), `reject_auth()` (close with
`reject_code`, 4004 unless set), `reconnect()` (op 7), `invalidate_session()` (op 9, not
resumable). As Discord, it ends a session whose client closed with 1000/1001 or that it closed
with an error: a RESUME of it is answered with op 9, d=false (`refused_resumes`).
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
    bad,
    bearer,
    body_dict,
    number_text,
)

_HEARTBEAT_INTERVAL_MS = 41_250
HOST = "gateway.fake.invalid"
# The fake's bot user (READY's `user`): `<@BOT_USER_ID>` mentions it.
BOT_USER_ID = "1000000000000000077"


@attrs.define
class FakeDiscordGateway(SteerableSocket):
    # Every dispatch ever sent, in order: (seq, session, frame). seq is global and increasing.
    dispatches: list[tuple[int, str, dict[str, Any]]] = attrs.Factory(list)
    identifies: int = 0
    resumes: int = 0  # RESUMEs received, refused ones included
    refused_resumes: int = 0  # answered with op 9 (not resumable): the session had ended
    # The code of every close frame the client sent, in order (None: closed without a code).
    client_close_codes: list[int | None] = attrs.Factory(list)
    # What `reject_auth()` closes with: 4004 (bad token), or e.g. 4014 (disallowed intents).
    reject_code: int = 4004
    # False: heartbeats go unanswered, so the client must judge the connection a zombie.
    ack_heartbeats: bool = True
    # Sessions Discord has ended: the client closed with 1000/1001 ("your session will be
    # invalidated", https://discord.com/developers/docs/topics/gateway#closing-connections),
    # or we closed with an error code. A RESUME of one is answered with op 9, d=false.
    ended_sessions: set[str] = attrs.Factory(set)
    heartbeats: int = 0
    connections_open: int = 0
    # True: the gateway says HELLO and reads the IDENTIFY, then answers nothing (a hung handshake).
    silent: bool = False
    _ops: list[int] = attrs.Factory(list)  # op 7 / op 9 to send to live connections
    _seq: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    # --- steering ---

    def push(self, text: str, channel_id: str | None = None, *, bot: bool = False, speech: Speech = DIRECT) -> str:
        """A `MESSAGE_CREATE`: a DM unless `speech.group` (a guild channel); a mention of the
        bot is `<@BOT>` in the content and the bot in `mentions`."""
        n = next(self._ids)
        ident = str(1_100_000_000_000_000_000 + n)
        author = {"id": speech.user or str(900 + n), "username": "bot" if bot else "person", "bot": bot}
        me = {"id": BOT_USER_ID, "username": "fakebot", "bot": True}
        data: dict[str, Any] = {"id": ident, "channel_id": speech.group or channel_id or "4242", "author": author,
                                "content": "" if speech.media or speech.service else text, "type": 0,
                                "mentions": [me] if speech.mention else []}  # fmt: skip
        if speech.group is not None:
            data["guild_id"] = "5150"
        if speech.mention:
            data["content"] = f"<@{BOT_USER_ID}> {data['content']}"
        if speech.reply_to_bot:
            data.update(type=19, referenced_message={"id": str(int(ident) - 1), "author": me})
        if speech.media:
            data["attachments"] = [{"id": f"a{n}", "filename": "cat.png", "content_type": "image/png"}]
        if speech.service:  # THREAD_CREATED: a service message whose content is the thread's name
            data.update(type=18, content=text)
        self._dispatch("*", "MESSAGE_UPDATE" if speech.edited else "MESSAGE_CREATE", data)
        return ident

    def answer_handshakes(self) -> None:
        """A `silent` gateway answers the handshakes it holds, and those to come."""
        self.silent = False
        self._wake()

    def reconnect(self) -> None:
        self._ops.append(7)
        self._wake()

    def invalidate_session(self) -> None:
        self._ops.append(9)
        self._wake()

    def _dispatch(self, session: str, kind: str, data: dict[str, Any]) -> None:
        seq = next(self._seq)
        self.dispatches.append((seq, session, {"op": 0, "t": kind, "s": seq, "d": data}))
        self._wake()

    # --- serving ---

    def connect(self, url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        return in_memory_websocket(HOST, "/" + url.partition("/?")[2], self._serve)

    async def _serve(self, nursery: trio.Nursery, stream: trio.abc.Stream) -> None:
        request = await trio_websocket.wrap_server_stream(nursery, stream)
        ws = await request.accept()
        self.connections_open += 1
        session: list[str] = []  # this connection's session, once READY or RESUMED
        try:
            await self._session(ws, stream, session)
        except* trio_websocket.ConnectionClosed:
            self._client_closed(ws, session)
        finally:
            self.connections_open -= 1

    def _client_closed(self, ws: trio_websocket.WebSocketConnection, session: list[str]) -> None:
        reason = ws.closed
        if reason is None or reason.code == 1006:  # dropped without a close frame
            return
        self.client_close_codes.append(reason.code)
        if reason.code in (1000, 1001):
            self.ended_sessions.update(session)

    async def _session(
        self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream, session: list[str]
    ) -> None:
        drops = self._drops
        await _send(ws, {"op": 10, "d": {"heartbeat_interval": _HEARTBEAT_INTERVAL_MS}})
        first = json.loads(await ws.get_message())
        if self.auth_rejected:
            if first.get("op") == 6:
                self.ended_sessions.add(str(first["d"]["session_id"]))
            await ws.aclose(self.reject_code, "Refused.")
            return
        if first.get("op") == 6 and first["d"]["session_id"] in self.ended_sessions:
            await self._refuse_resume(ws)
            return
        while self.silent:
            await self._changed.wait()
        sent = await self._start(ws, first, session)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._acknowledge, ws)
            while self._drops == drops:
                changed = self._changed  # taken first: a push while we send wakes the next wait
                for seq, _, frame in self.dispatches:
                    if seq > sent and frame["t"] == "MESSAGE_CREATE":
                        await _send(ws, frame)
                        sent = seq
                if self._ops:
                    await _send(ws, {"op": self._ops.pop(0), "d": False})
                await changed.wait()
            await stream.aclose()  # dropped: no close frame, the client sees 1006
            nursery.cancel_scope.cancel()

    async def _refuse_resume(self, ws: trio_websocket.WebSocketConnection) -> None:
        """op 9, d=false: the client must IDENTIFY on a new connection; it closes this one."""
        self.resumes += 1
        self.refused_resumes += 1
        await _send(ws, {"op": 9, "d": False})
        while True:
            await ws.get_message()  # until the client's close (ConnectionClosed)

    async def _start(self, ws: trio_websocket.WebSocketConnection, first: dict[str, Any], session: list[str]) -> int:
        """READY for an IDENTIFY (only new messages follow); for a RESUME, the dispatches after
        its `seq` are replayed, then RESUMED."""
        if first.get("op") == 6:
            self.resumes += 1
            session.append(str(first["d"]["session_id"]))
            after = int(first["d"]["seq"])
            for seq, _, frame in self.dispatches:
                if seq > after and frame["t"] == "MESSAGE_CREATE":
                    await _send(ws, frame)
            self._dispatch("*", "RESUMED", {})
            await _send(ws, self.dispatches[-1][2])
            return self.dispatches[-1][0]
        self.identifies += 1
        session.append(f"session-{self.identifies}")
        ready = {"session_id": session[0], "resume_gateway_url": f"wss://{HOST}", "user": {"id": BOT_USER_ID}}
        self._dispatch(session[0], "READY", ready)
        await _send(ws, self.dispatches[-1][2])
        return self.dispatches[-1][0]

    async def _acknowledge(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            frame = json.loads(await ws.get_message())
            if frame.get("op") == 1:
                self.heartbeats += 1
                if self.ack_heartbeats:
                    await _send(ws, {"op": 11})


async def _send(ws: trio_websocket.WebSocketConnection, frame: dict[str, Any]) -> None:
    await ws.send_message(json.dumps(frame))


# --- the REST API --------------------------------------------------------------------------------

NAME = "discord"
# `content`'s limit, counted in characters (code points) as Discord counts it.
MAX_CONTENT = 2000
UNAUTHORIZED = {"message": "401: Unauthorized", "code": 0}


@attrs.define
class DiscordFake(SocketFake):
    name = NAME
    routes = (
        (re.compile(r"/users/@me/channels$"), "dm"),
        (re.compile(r"/channels/(?P<id>\d+)/messages$"), "send"),
        (re.compile(r"/channels/(?P<id>\d+)/typing$"), "typing"),
        (re.compile(r"/gateway/bot$"), "gateway"),
    )
    reject_default = (404, 10003, "Unknown Channel")
    websocket_host = HOST
    socket: FakeDiscordGateway = attrs.Factory(FakeDiscordGateway)
    # DM channel id per user id, as Discord hands out one per user.
    dm_channels: dict[str, str] = attrs.Factory(dict)

    def error_body(self, code: Json, message: str) -> Json:
        return {"code": code, "message": message}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        after = rule.retry_after if rule.retry_after is not None else 1.0
        body = {"message": "You are being rate limited.", "retry_after": after, "global": False}
        return FakeResponse(429, body, {"Retry-After": number_text(after)})

    async def answer_any_method(
        self, server: FakeServer, request: FakeRequest, op: str, params: Params
    ) -> FakeResponse | None:
        if op != "gateway":
            return None
        if not server.credential_ok(NAME, bearer(request.headers, "Bot")) or self.socket.auth_rejected:
            return bad(401, UNAUTHORIZED)
        return FakeResponse(200, {"url": f"wss://{HOST}", "shards": 1})

    async def answer(self, server: FakeServer, request: FakeRequest, op: str, params: Params) -> FakeResponse:
        if not server.credential_ok(NAME, bearer(request.headers, "Bot")):
            return bad(401, UNAUTHORIZED)
        if op == "typing":  # Trigger Typing Indicator: 204, recorded in `requests`
            return FakeResponse(204, b"")
        return self._dm(server, request) if op == "dm" else self._send(server, request, params["id"])

    def _dm(self, server: FakeServer, request: FakeRequest) -> FakeResponse:
        recipient = body_dict(request).get("recipient_id")
        if not isinstance(recipient, str) or not recipient.isdigit():
            return bad(400, {"message": "Invalid Form Body", "code": 50035})
        channel_id = self.dm_channels.setdefault(recipient, server.next_id())
        return FakeResponse(200, {"id": channel_id, "type": 1, "recipients": [{"id": recipient}]})

    def _send(self, server: FakeServer, request: FakeRequest, channel_id: str) -> FakeResponse:
        body = body_dict(request)
        nonce = body.get("nonce")
        content = body.get("content")
        if not content or (nonce is not None and len(str(nonce)) > 25):
            return bad(400, {"message": "Invalid Form Body", "code": 50035})
        if len(str(content)) > MAX_CONTENT:
            too_long = {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}]}
            return bad(400, {"message": "Invalid Form Body", "code": 50035, "errors": {"content": too_long}})
        users = {cid: uid for uid, cid in self.dm_channels.items()}
        to = f"user:{users[channel_id]}" if channel_id in users else f"channel:{channel_id}"
        answer = {"id": server.next_id(), "channel_id": channel_id, "content": body["content"], "nonce": nonce}
        key = f"{channel_id}/{nonce}" if nonce is not None and body.get("enforce_nonce") else None
        return FakeResponse(200, server.once(NAME, key, Delivered(NAME, to, body["content"], nonce), answer))
