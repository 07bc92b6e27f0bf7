"""Discord, all of it: the address rule; REST API `POST /channels/{id}/messages`, after opening a
DM channel for `user:` ids, and what its answers mean; listening on the Gateway websocket
(SPEC 11). `KIND` describes it to the registry."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from typing import Any, Protocol

import attrs
import trio

from trio_gateway import upstream as httpx
from trio_gateway.channels.base import (
    OK,
    AccountSpec,
    AddressRule,
    ChannelKind,
    Headers,
    Outcome,
    by_status,
    field,
    reason_prefix,
    retry_after,
    seconds,
)
from trio_gateway.channels.http import JsonClient, scrub, stable_key
from trio_gateway.channels.inbound import (
    DISCONNECT_SECONDS,
    UNKNOWN_BOT,
    AuthFailed,
    BotSelf,
    Heard,
    Intake,
    ListenError,
    WebSocketConnect,
    beside,
    json_dict,
    leaf_errors,
)
from trio_gateway.channels.markdown import TextForm
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

DM_PATH = "/users/@me/channels"
# Discord rejects a nonce longer than 25 characters.
NONCE_LIMIT = 25
ADDRESS = AddressRule(re.compile(r"^(?:user|channel):\d{17,20}$"), "user:<snowflake> or channel:<snowflake>")


def classify(status: int, body: object, headers: Headers) -> Outcome:
    """Discord speaks in HTTP statuses; a 429 carries `retry_after` (seconds) in its JSON body."""
    if 200 <= status < 300 and isinstance(body, Mapping):
        return OK
    reason = reason_prefix(status, "discord", field(body, "code"), field(body, "message"))
    if status == 429:
        delay = seconds(field(body, "retry_after"))
        return Outcome("rate_limited", reason, delay if delay is not None else retry_after(headers), status)
    return by_status(status, headers, reason)


def parse_address(to: str) -> tuple[str, str]:
    """`("user", id)` or `("channel", id)`; a bare snowflake is a channel id."""
    kind, sep, rest = to.partition(":")
    if sep and kind in ("user", "channel"):
        return kind, rest
    return "channel", to


def message_body(entry: DeliveryEntry) -> dict[str, object]:
    # enforce_nonce makes Discord answer a repeated nonce with the message it already created.
    nonce = stable_key(entry.idempotency_key, NONCE_LIMIT)
    return {"content": entry.payload.text, "nonce": nonce, "enforce_nonce": True}


# How a reply is sent (SPEC 15): Discord renders Markdown itself, so as written. `content` holds
# at most 2,000 characters (https://discord.com/developers/docs/resources/message#create-message);
# counted here in UTF-16 code units, which is never less than Discord's own count.
TEXT = TextForm(2000, "utf16", style=None)


@attrs.define
class DiscordChannel:
    http: JsonClient
    # DM channel id per user id: Discord returns the same one every time, so ask once.
    dm_channels: dict[str, str] = attrs.Factory(dict)
    name: str = "discord"
    deduplicates: bool = True

    @classmethod
    def open(cls, base_url: str, token: str, transport: AsyncBaseTransport) -> DiscordChannel:
        headers = {"Authorization": f"Bot {token}"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[token]))

    async def send(self, entry: DeliveryEntry) -> Outcome:
        return self.http.clean(await self._send(entry))

    async def _send(self, entry: DeliveryEntry) -> Outcome:
        kind, ident = parse_address(entry.to)
        channel_id = await self._dm_channel(ident) if kind == "user" else ident
        if isinstance(channel_id, Outcome):
            return channel_id
        reply = await self.http.post(f"/channels/{channel_id}/messages", message_body(entry))
        if isinstance(reply, Outcome):
            return reply
        return classify(reply.status, reply.body, reply.headers)

    async def show_typing(self, to: str, context_token: str | None) -> None:
        """`POST /channels/{id}/typing`: shown for 10 s or until the next message."""
        kind, ident = parse_address(to)
        channel_id = await self._dm_channel(ident) if kind == "user" else ident
        if isinstance(channel_id, str):
            await self.http.post(f"/channels/{channel_id}/typing", {})

    async def _dm_channel(self, user_id: str) -> str | Outcome:
        cached = self.dm_channels.get(user_id)
        if cached is not None:
            return cached
        reply = await self.http.post(DM_PATH, {"recipient_id": user_id})
        if isinstance(reply, Outcome):
            return reply
        outcome = classify(reply.status, reply.body, reply.headers)
        channel_id = field(reply.body, "id")
        if not outcome.ok:
            return attrs.evolve(outcome, reason=f"open DM: {outcome.reason}")
        if not isinstance(channel_id, str):
            return Outcome("retry", "open DM: reply without a channel id", http_status=reply.status)
        self.dm_channels[user_id] = channel_id
        return channel_id

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening (SPEC 11): the Gateway websocket ------------------------------------------------

GATEWAY_BOT_PATH = "/gateway/bot"
GATEWAY_QUERY = "?v=10&encoding=json"
# GUILD_MESSAGES (1 << 9) | DIRECT_MESSAGES (1 << 12) | MESSAGE_CONTENT (1 << 15)
INTENTS = (1 << 9) | (1 << 12) | (1 << 15)
OP_DISPATCH, OP_HEARTBEAT, OP_IDENTIFY, OP_RESUME = 0, 1, 2, 6
OP_RECONNECT, OP_INVALID_SESSION, OP_HELLO, OP_HEARTBEAT_ACK = 7, 9, 10, 11
CLOSE_AUTH_FAILED = 4004
# Close codes after which the session cannot be resumed: identify afresh.
CLOSE_NOT_RESUMABLE = (4007, 4009)
CLOSE_FATAL = (4010, 4011, 4012, 4013, 4014)
# How we close a connection whose session we mean to RESUME. Discord ends the session of a
# client that closes with 1000 or 1001 ("your session will be invalidated"), so any other code:
# 4000, as discord.py's `DiscordWebSocket.close` does. Documented at
# https://discord.com/developers/docs/topics/gateway#closing-connections
CLOSE_TO_RESUME = 4000


class WebSocket(Protocol):
    """What the listener uses of a trio-websocket connection."""

    async def get_message(self) -> str | bytes: ...

    async def send_message(self, message: str | bytes) -> None: ...

    async def aclose(self, code: int = 1000, reason: str | None = None) -> None: ...


# Message types a person writes (DEFAULT, REPLY); the others are service messages (a member
# joined, a pin, a boost): never a turn.
_PERSON_TYPES = (0, 19)


def heard(event: object, me: BotSelf = UNKNOWN_BOT) -> Heard | None:
    """A `MESSAGE_CREATE` from a person (not a bot, our own replies included; not a service
    message). In a guild it is a group message, addressed when `mentions` holds the bot or it
    replies to one of the bot's messages; `<@BOT>` is taken out of the text. A thread is a
    channel of its own on Discord, so the reply reaches the thread by its channel id."""
    if not isinstance(event, dict):
        return None
    author = json_dict(event.get("author"))
    if not author or author.get("bot") or event.get("webhook_id") or event.get("type", 0) not in _PERSON_TYPES:
        return None
    content, channel_id, ident = event.get("content"), event.get("channel_id"), event.get("id")
    content = content if isinstance(content, str) else ""
    media = not content.strip() and bool(event.get("attachments") or event.get("sticker_items"))
    if (not content.strip() and not media) or not isinstance(channel_id, str) or not ident:
        return None
    bot = me.user_id
    mentioned = any(json_dict(user).get("id") == bot for user in event.get("mentions") or []) if bot else False
    replied = bot is not None and json_dict(json_dict(event.get("referenced_message")).get("author")).get("id") == bot
    if bot:
        content = " ".join(re.sub(rf"<@!?{re.escape(bot)}>", " ", content).split())
    sender = author.get("id")
    return Heard(
        str(ident),
        f"channel:{channel_id}",
        content,
        sender=sender if isinstance(sender, str) else None,
        chat="group" if event.get("guild_id") else "direct",
        addressed=mentioned or replied,
        media=media,
    )


@attrs.define
class DiscordListener:
    """HELLO → IDENTIFY (or RESUME after a drop) → heartbeats with the last sequence; a
    MESSAGE_CREATE is a turn before its sequence counts as seen, so a RESUME replays anything
    not yet a durable turn. Session and sequence live in memory: a restart identifies again."""

    http: JsonClient
    token: str
    account_id: str
    connect: WebSocketConnect
    channel: str = "discord"
    session_id: str | None = None
    seq: int | None = None
    resume_url: str | None = None
    # The bot user (READY's `user`): a message mentioning it addresses the bot.
    me: BotSelf = UNKNOWN_BOT

    @classmethod
    def open(
        cls, base_url: str, token: str, account_id: str, transport: AsyncBaseTransport, connect: WebSocketConnect
    ) -> DiscordListener:
        http = JsonClient.open(base_url, transport, headers={"Authorization": f"Bot {token}"}, secrets=[token])
        return cls(http, token, account_id, connect)

    async def _gateway_url(self) -> str:
        if self.session_id is not None and self.resume_url:
            return self.resume_url
        try:
            response = await self.http.client.get(GATEWAY_BOT_PATH)
        except httpx.HTTPError as exc:
            raise ListenError(scrub(f"GET {GATEWAY_BOT_PATH}: {type(exc).__name__}", self.http.secrets)) from None
        if response.status_code in (401, 403):
            raise AuthFailed(f"HTTP {response.status_code} from {GATEWAY_BOT_PATH}")
        url = field(_json(response), "url")
        if response.status_code != 200 or not isinstance(url, str):
            raise ListenError(f"HTTP {response.status_code} from {GATEWAY_BOT_PATH}")
        return url

    async def listen(self, intake: Intake) -> None:
        url = await self._gateway_url()
        try:
            async with self.connect(url.rstrip("/") + "/" + GATEWAY_QUERY) as ws:
                await self._session(ws, intake)
        except Exception as exc:  # cancellation is not an Exception: it passes untouched
            raise self._translate(exc) from None

    def _translate(self, exc: Exception) -> Exception:
        """One error the supervisor understands, from what the socket and our nursery raised
        (trio wraps a child task's error in an ExceptionGroup). One, because the supervisor
        decides by it (pause, resume or reconnect); any other is named in its notes."""
        import trio_websocket  # here, not at the top: see `inbound.open_websocket`

        leaves = list(leaf_errors(exc))
        for leaf in leaves:
            if isinstance(leaf, AuthFailed):
                return beside(leaf, leaf, leaves)
        for leaf in leaves:
            # Ours (op 7, a zombie): the cause. Closing to resume makes the reading task see
            # its own close as ConnectionClosed 1000 (trio-websocket's local close reason),
            # which says nothing about the gateway.
            if isinstance(leaf, ListenError):
                return beside(leaf, leaf, leaves)
        for leaf in leaves:
            if isinstance(leaf, trio_websocket.ConnectionClosed):
                return beside(self._closed(leaf.reason.code if leaf.reason else None), leaf, leaves)
        for leaf in leaves:
            if isinstance(leaf, (trio_websocket.HandshakeError, OSError)):
                return beside(ListenError(f"websocket: {type(leaf).__name__}: {leaf}"), leaf, leaves)
        return exc

    def _closed(self, code: int | None) -> Exception:
        if code == CLOSE_AUTH_FAILED or code in CLOSE_FATAL or code in CLOSE_NOT_RESUMABLE:
            # The session died with this connection: after `channels resume` (or the next
            # reconnect) the listener identifies afresh; a RESUME would only be refused.
            self.session_id = self.seq = None
        if code == CLOSE_AUTH_FAILED:
            return AuthFailed(f"gateway close code {code}: authentication failed")
        if code in CLOSE_FATAL:
            return AuthFailed(f"gateway close code {code}: the bot cannot connect as configured")
        return ListenError(f"gateway closed the connection (code {code})")

    async def _session(self, ws: WebSocket, intake: Intake) -> None:
        hello = await _receive(ws)
        if hello.get("op") != OP_HELLO:
            raise ListenError(f"expected HELLO, got op {hello.get('op')}")
        given = field(hello.get("d"), "heartbeat_interval")
        interval = (given if isinstance(given, (int, float)) and given > 0 else 41250) / 1000
        async with trio.open_nursery() as nursery:
            acked = [True]
            nursery.start_soon(self._heartbeat, ws, interval, acked)
            if self.session_id is not None and self.seq is not None:
                resume = {"token": self.token, "session_id": self.session_id, "seq": self.seq}
                await _send(ws, OP_RESUME, resume)
            else:
                await _send(ws, OP_IDENTIFY, self._identify())
            while True:
                await self._handle(ws, await _receive(ws), intake, acked)

    def _identify(self) -> dict[str, Any]:
        properties = {"os": "linux", "browser": "trio-gateway", "device": "trio-gateway"}
        return {"token": self.token, "intents": INTENTS, "properties": properties}

    async def _heartbeat(self, ws: WebSocket, interval: float, acked: list[bool]) -> None:
        # The first beat after interval * jitter, as Discord asks, so reconnecting bots spread out.
        await trio.sleep(interval * random.random())
        while True:
            if not acked[0]:
                await _close_to_resume(ws)
                raise ListenError("no heartbeat ACK: the connection is a zombie")
            acked[0] = False
            await _send(ws, OP_HEARTBEAT, self.seq)
            await trio.sleep(interval)

    async def _handle(self, ws: WebSocket, frame: dict[str, Any], intake: Intake, acked: list[bool]) -> None:
        op = frame.get("op")
        if op == OP_HEARTBEAT_ACK:
            acked[0] = True
        elif op == OP_HEARTBEAT:
            await _send(ws, OP_HEARTBEAT, self.seq)
        elif op == OP_RECONNECT:
            await _close_to_resume(ws)
            raise ListenError("the gateway asked us to reconnect (op 7)")
        elif op == OP_INVALID_SESSION:
            if frame.get("d") is True:
                await _close_to_resume(ws)
            else:
                self.session_id = self.seq = None  # the socket's plain close (1000) is right here
            raise ListenError("invalid session (op 9)")
        elif op == OP_DISPATCH:
            await self._dispatch(frame, intake)

    async def _dispatch(self, frame: dict[str, Any], intake: Intake) -> None:
        kind, data = frame.get("t"), frame.get("d")
        if kind == "READY" and isinstance(data, dict):
            self.session_id = data.get("session_id")
            resume = data.get("resume_gateway_url")
            self.resume_url = resume if isinstance(resume, str) else None
            user = json_dict(data.get("user")).get("id")
            self.me = BotSelf(user if isinstance(user, str) else None)
            intake.connected()
        elif kind == "RESUMED":
            intake.connected()
        elif kind == "MESSAGE_CREATE":
            found = heard(data, self.me)
            if found is not None:
                await intake.accept(found)
        seq = frame.get("s")
        if isinstance(seq, int):
            self.seq = seq  # only now: a RESUME replays what was not yet a durable turn

    async def stop(self) -> None:
        # The websocket was closed (close frame, bounded) when the listener's scope exited.
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()


async def _receive(ws: WebSocket) -> dict[str, Any]:
    raw = await ws.get_message()
    try:
        frame = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ListenError("gateway sent a frame that is not JSON") from None
    if not isinstance(frame, dict):
        raise ListenError("gateway sent a frame that is not a JSON object")
    return frame


async def _close_to_resume(ws: WebSocket) -> None:
    """Close so that the session survives for the RESUME that follows (`CLOSE_TO_RESUME`); the
    socket context's own close afterwards finds it closed already. Bounded as that close is: a
    gateway that never answers the close frame must not hold the reconnect. Shielded within
    that bound: when the heartbeat task closes, the reading task sees the close at once and its
    error cancels the nursery, which would cut the close frame before it is sent (the gateway
    would see the socket drop, never the 4000)."""
    with trio.move_on_after(DISCONNECT_SECONDS, shield=True):
        await ws.aclose(CLOSE_TO_RESUME, "reconnecting to resume")


async def _send(ws: WebSocket, op: int, data: Any) -> None:
    await ws.send_message(json.dumps({"op": op, "d": data}))


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        return None


# --- the record the registry lists -------------------------------------------------------------


def _open_sender(a: AccountSpec) -> DiscordChannel:
    return DiscordChannel.open(a.base_url, a.token, a.transport())


def _open_listener(a: AccountSpec, connect: WebSocketConnect) -> DiscordListener:
    return DiscordListener.open(a.base_url, a.token, a.account_id, a.transport(), connect)


KIND = ChannelKind(
    name="discord",
    address=ADDRESS,
    classify=classify,
    open_sender=_open_sender,
    default_mode=lambda _: "socket",
    listeners={"socket": _open_listener},
    text=TEXT,
    typing_every=8.0,  # the indicator shows for 10 s
)
