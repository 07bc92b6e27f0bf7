"""Slack Web API: `POST /chat.postMessage`. Slack takes no idempotency key, so a resend after
a crash may show the message twice (the worker logs it as a possible duplicate). Listening:
Socket Mode (SPEC 11), with the app-level token of `appTokenEnv`."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

from trio_gateway.channels.classify import Outcome, classify_slack
from trio_gateway.channels.http import JsonClient
from trio_gateway.channels.listen import (
    AuthFailed,
    Heard,
    Intake,
    ListenError,
    WebSocketConnect,
    post_json,
    socket_error,
)
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

SEND_PATH = "/chat.postMessage"


@attrs.define
class SlackChannel:
    http: JsonClient
    name: str = "slack"
    deduplicates: bool = False

    @classmethod
    def open(cls, base_url: str, token: str, transport: AsyncBaseTransport) -> SlackChannel:
        headers = {"Authorization": f"Bearer {token}"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[token]))

    async def send(self, entry: DeliveryEntry) -> Outcome:
        return await self.http.send(SEND_PATH, {"channel": entry.to, "text": entry.payload.text}, classify_slack)

    async def aclose(self) -> None:
        await self.http.aclose()


# --- listening (SPEC 11): Socket Mode ----------------------------------------------------------

CONNECT_PATH = "/apps.connections.open"
AUTH_ERRORS = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "not_allowed_token_type")


def heard(payload: object) -> Heard | None:
    """An Events API `message` from a person (no `bot_id`, no subtype: our own replies come
    back as bot messages, and answering them would loop), or None."""
    if not isinstance(payload, dict):
        return None
    event = payload.get("event")
    if not isinstance(event, dict) or event.get("type") != "message" or event.get("bot_id") or event.get("subtype"):
        return None
    channel, text = event.get("channel"), event.get("text")
    ident = payload.get("event_id") or event.get("client_msg_id") or event.get("ts")
    if not isinstance(channel, str) or not channel or not isinstance(text, str) or not text.strip() or not ident:
        return None
    return Heard(str(ident), channel, text)


@attrs.define
class SlackSocketListener:
    """`apps.connections.open` with the app-level token for a `wss://` URL; each envelope is
    acknowledged only after its message is a durable turn (Slack redelivers an unacknowledged
    one, and the event id makes the redelivery a no-op); `disconnect` envelopes reconnect."""

    http: JsonClient
    account_id: str
    connect: WebSocketConnect
    channel: str = "slack"

    @classmethod
    def open(
        cls, base_url: str, app_token: str, account_id: str, transport: AsyncBaseTransport, connect: WebSocketConnect
    ) -> SlackSocketListener:
        headers = {"Authorization": f"Bearer {app_token}"}
        return cls(JsonClient.open(base_url, transport, headers=headers, secrets=[app_token]), account_id, connect)

    async def _url(self) -> str:
        reply = await post_json(self.http, CONNECT_PATH, {}, read_seconds=20.0)
        error = reply.get("error") if isinstance(reply, dict) else None
        if error in AUTH_ERRORS:
            raise AuthFailed(f"apps.connections.open: {error}")
        url = reply.get("url") if isinstance(reply, dict) else None
        if not isinstance(url, str) or not reply.get("ok"):
            raise ListenError(f"apps.connections.open: {error or 'no url'}")
        return url

    async def listen(self, intake: Intake) -> None:
        url = await self._url()
        try:
            async with self.connect(url) as ws:
                while True:
                    await self._envelope(ws, await ws.get_message(), intake)
        except Exception as exc:  # cancellation is not an Exception: it passes untouched
            raise socket_error(exc, "Socket Mode connection") from None

    async def _envelope(self, ws: Any, raw: str | bytes, intake: Intake) -> None:
        try:
            envelope = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ListenError("Socket Mode sent a frame that is not JSON") from None
        kind = envelope.get("type") if isinstance(envelope, dict) else None
        if kind == "hello":
            intake.connected()
        elif kind == "disconnect":
            raise ListenError(f"Slack asked us to reconnect ({envelope.get('reason')})")
        elif kind == "events_api":
            found = heard(envelope.get("payload"))
            if found is not None:
                await intake.accept(found)
        ident = envelope.get("envelope_id") if isinstance(envelope, dict) else None
        if isinstance(ident, str):
            await ws.send_message(json.dumps({"envelope_id": ident}))  # after acceptance, never before

    async def stop(self) -> None:
        # The websocket was closed (close frame, bounded) when the listener's scope exited.
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()
