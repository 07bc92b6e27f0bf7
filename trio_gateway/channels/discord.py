"""Discord REST API: `POST /channels/{id}/messages`, after opening a DM channel for `user:` ids."""

from __future__ import annotations

import attrs

from trio_gateway.channels.http import JsonClient, stable_key
from trio_gateway.classify import Outcome, classify_discord, field
from trio_gateway.entry import DeliveryEntry
from trio_gateway.http_client import AsyncBaseTransport

DM_PATH = "/users/@me/channels"
# Discord rejects a nonce longer than 25 characters.
NONCE_LIMIT = 25


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
        return classify_discord(reply.status, reply.body, reply.headers)

    async def _dm_channel(self, user_id: str) -> str | Outcome:
        cached = self.dm_channels.get(user_id)
        if cached is not None:
            return cached
        reply = await self.http.post(DM_PATH, {"recipient_id": user_id})
        if isinstance(reply, Outcome):
            return reply
        outcome = classify_discord(reply.status, reply.body, reply.headers)
        channel_id = field(reply.body, "id")
        if not outcome.ok:
            return attrs.evolve(outcome, reason=f"open DM: {outcome.reason}")
        if not isinstance(channel_id, str):
            return Outcome("retry", "open DM: reply without a channel id", http_status=reply.status)
        self.dm_channels[user_id] = channel_id
        return channel_id

    async def aclose(self) -> None:
        await self.http.aclose()
