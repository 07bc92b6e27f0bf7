"""Feishu (Lark) open platform: tenant token, then `POST /open-apis/im/v1/messages`; and the
decryption of encrypted webhook events (AES-256-CBC, key = SHA-256 of the encrypt key)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

import attrs
import trio
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trio_gateway.channels.http import JsonClient, Reply, stable_key
from trio_gateway.classify import FEISHU_TOKEN_INVALID_CODES, Outcome, classify_feishu, classify_feishu_token, field
from trio_gateway.entry import DeliveryEntry
from trio_gateway.http_client import AsyncBaseTransport

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
# Feishu rejects a `uuid` longer than 50 characters.
UUID_LIMIT = 50
# Refresh this long before the token expires, so a send never races its expiry in flight.
REFRESH_MARGIN_SECONDS = 300.0


def receive_id_type(to: str) -> str:
    """Feishu needs to be told which kind of id `receive_id` is; the prefix says it."""
    if to.startswith("ou_"):
        return "open_id"
    if to.startswith("on_"):
        return "union_id"
    if to.startswith("oc_"):
        return "chat_id"
    if "@" in to:
        return "email"
    return "user_id"


def message_body(entry: DeliveryEntry) -> dict[str, str]:
    return {
        "receive_id": entry.to,
        "msg_type": "text",
        "content": json.dumps({"text": entry.payload.text}, ensure_ascii=False),
        "uuid": stable_key(entry.idempotency_key, UUID_LIMIT),
    }


@attrs.define
class TenantToken:
    """The cached tenant access token; one fetch at a time, however many sends wait for it."""

    value: str | None = None
    refresh_at: float = 0.0
    lock: trio.Lock = attrs.Factory(trio.Lock)

    def valid(self) -> str | None:
        return self.value if self.value is not None and trio.current_time() < self.refresh_at else None

    def store(self, value: str, expire: float) -> None:
        self.value = value
        self.refresh_at = trio.current_time() + expire - min(REFRESH_MARGIN_SECONDS, expire / 2)

    def invalidate(self, value: str) -> None:
        # Only the token that was refused: a concurrent send may already have fetched a new one.
        if self.value == value:
            self.value = None


@attrs.define
class FeishuChannel:
    http: JsonClient
    app_id: str
    app_secret: str
    token: TenantToken = attrs.Factory(TenantToken)
    name: str = "feishu"
    deduplicates: bool = True

    @classmethod
    def open(cls, base_url: str, app_id: str, app_secret: str, transport: AsyncBaseTransport) -> FeishuChannel:
        return cls(JsonClient.open(base_url, transport, secrets=[app_secret]), app_id, app_secret)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        return self.http.clean(await self._send(entry))

    async def _send(self, entry: DeliveryEntry) -> Outcome:
        token = await self._tenant_token()
        if isinstance(token, Outcome):
            return token
        reply = await self._post(entry, token)
        if isinstance(reply, Reply) and field(reply.body, "code") in FEISHU_TOKEN_INVALID_CODES:
            # Revoked or rotated before its expiry: fetch a fresh one and try exactly once more.
            self.token.invalidate(token)
            token = await self._tenant_token()
            if isinstance(token, Outcome):
                return token
            reply = await self._post(entry, token)
        if isinstance(reply, Outcome):
            return reply
        return classify_feishu(reply.status, reply.body, reply.headers)

    async def _post(self, entry: DeliveryEntry, token: str) -> Reply | Outcome:
        path = f"{MESSAGES_PATH}?receive_id_type={receive_id_type(entry.to)}"
        return await self.http.post(path, message_body(entry), headers={"Authorization": f"Bearer {token}"})

    async def _tenant_token(self) -> str | Outcome:
        async with self.token.lock:
            cached = self.token.valid()
            if cached is not None:
                return cached
            reply = await self.http.post(TOKEN_PATH, {"app_id": self.app_id, "app_secret": self.app_secret})
            if isinstance(reply, Outcome):
                return attrs.evolve(reply, reason=f"tenant token: {reply.reason}")
            outcome = classify_feishu_token(reply.status, reply.body, reply.headers)
            value, expire = field(reply.body, "tenant_access_token"), field(reply.body, "expire")
            if not outcome.ok or not isinstance(value, str):
                return outcome
            self.token.store(value, float(expire) if isinstance(expire, (int, float)) and expire > 0 else 7200.0)
            return value

    async def aclose(self) -> None:
        await self.http.aclose()


# --- encrypted webhook events (SPEC 11: `encryptKeyEnv`) ---------------------------------------

AES_BLOCK_BYTES = 16


class FeishuDecryptError(ValueError):
    """The body is not an event encrypted with this account's key."""


def _aes_key(encrypt_key: str) -> bytes:
    # The platform's rule: the AES-256 key is the SHA-256 of the encrypt key as configured.
    return hashlib.sha256(encrypt_key.encode()).digest()


def decrypt_event(encrypted: str, encrypt_key: str) -> dict[str, Any]:
    """`{"encrypt": B64}`: base64 of IV (16 bytes) + AES-256-CBC ciphertext, PKCS#7 padded,
    of the event's JSON."""
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (ValueError, binascii.Error):
        raise FeishuDecryptError("encrypt is not base64") from None
    if len(raw) < 2 * AES_BLOCK_BYTES or len(raw) % AES_BLOCK_BYTES:
        raise FeishuDecryptError("encrypt has the wrong length for AES-CBC")
    decryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(raw[:AES_BLOCK_BYTES])).decryptor()
    unpadder = padding.PKCS7(AES_BLOCK_BYTES * 8).unpadder()
    try:
        plain = unpadder.update(decryptor.update(raw[AES_BLOCK_BYTES:]) + decryptor.finalize()) + unpadder.finalize()
        event = json.loads(plain)
    except (ValueError, UnicodeDecodeError):
        raise FeishuDecryptError("encrypt does not decrypt with this account's key") from None
    if not isinstance(event, dict):
        raise FeishuDecryptError("the decrypted event is not a JSON object")
    return event


def encrypt_event(event: dict[str, Any], encrypt_key: str, iv: bytes) -> str:
    """The platform's side of `decrypt_event`, for the fakes and tests."""
    padder = padding.PKCS7(AES_BLOCK_BYTES * 8).padder()
    plain = padder.update(json.dumps(event).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(plain) + encryptor.finalize()).decode()


def event_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """`X-Lark-Signature`: SHA-256 hex of timestamp + nonce + encrypt key + the raw body."""
    return hashlib.sha256(timestamp.encode() + nonce.encode() + encrypt_key.encode() + body).hexdigest()
