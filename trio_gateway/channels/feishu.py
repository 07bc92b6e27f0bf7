"""Feishu (Lark) open platform, all of it: the address rule; tenant token, then
`POST /open-apis/im/v1/messages`, and what its answers mean; the webhook (verification token in
the body, encrypted events: AES-256-CBC, key = SHA-256 of the encrypt key, signature headers);
the long connection (the SDK's protobuf-framed websocket). `KIND` describes it to the registry."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from trio_gateway.channels.base import (
    OK,
    AccountSpec,
    AddressRule,
    ChannelKind,
    Headers,
    Outcome,
    Webhook,
    account_as,
    by_status,
    field,
    header,
    reason_prefix,
    require_base_url,
    retry_after,
    seconds,
)
from trio_gateway.channels.http import JsonClient, Reply, post_json, stable_key
from trio_gateway.channels.inbound import (
    AuthFailed,
    Event,
    Heard,
    Intake,
    JsonObject,
    ListenError,
    WebhookRequest,
    WebSocketConnect,
    json_dict,
    message_event,
    socket_error,
)
from trio_gateway.errors import BadRequestError, UnauthorizedError
from trio_gateway.policy import strict_json
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
# Feishu rejects a `uuid` longer than 50 characters.
UUID_LIMIT = 50
# Refresh this long before the token expires, so a send never races its expiry in flight.
REFRESH_MARGIN_SECONDS = 300.0

# A pattern that accepts any `x@y` as a Feishu e-mail lets exactly the seed's entry through (a
# WeChat id queued for Feishu, answered `99992360 Invalid ids` twenty times), so Feishu names
# the foreign id suffixes it must never accept.
ADDRESS = AddressRule(
    re.compile(
        r"^(?:o[unc]_[A-Za-z0-9_-]+"  # open_id / union_id / chat_id
        r"|[A-Za-z0-9][A-Za-z0-9_-]*"  # user_id
        r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})$"  # e-mail
    ),
    "an ou_/on_/oc_ id, a user id or an e-mail address, never a WeChat (@im.wechat / @im.bot) id",
    foreign_suffixes=("@im.wechat", "@im.bot"),
)


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


# --- what an answer means (SPEC 7) -------------------------------------------------------------

PERMANENT_CODES = frozenset(
    {
        99992360,  # invalid ids (no such user or chat)
        99992361,  # open_id cross app: the id belongs to another app
        230001,  # invalid request parameter
        230002,  # the bot is not in the chat
        230006,  # the bot ability is not enabled
        230013,  # the user is outside the bot's availability range
        230017,  # the bot is not the chat owner / the chat forbids bots
        230099,  # message content too long or malformed
    }
)
RATE_LIMIT_CODES = frozenset({11232, 230020, 99991400})
# The tenant token is invalid or missing: refetch it and send once more, the message is fine.
TOKEN_INVALID_CODES = frozenset({99991661, 99991663, 99991664, 99991668})


def _rate_delay(headers: Headers) -> float | None:
    return retry_after(headers) or seconds(header(headers, "x-ogw-ratelimit-reset"))


def classify(status: int, body: object, headers: Headers) -> Outcome:
    """Feishu answers `{"code": 0, ...}` on success; a non-zero code is an error even with HTTP 200."""
    code = field(body, "code")
    reason = reason_prefix(status, "feishu", code, field(body, "msg"))
    if code == 0 and 200 <= status < 300:
        return OK
    if code in RATE_LIMIT_CODES or status == 429:
        return Outcome("rate_limited", reason, _rate_delay(headers), status)
    if code in PERMANENT_CODES:
        return Outcome("permanent", reason, http_status=status)
    if code in TOKEN_INVALID_CODES:
        # Reached only when a freshly fetched token is refused too: likely a clock or platform
        # hiccup, so worth a later retry rather than a dead letter.
        return Outcome("retry", reason, http_status=status)
    if isinstance(code, int) and 200 <= status < 300:
        return Outcome("retry", reason, http_status=status)  # unknown code: bounded retries decide
    return by_status(status, headers, reason)


def classify_token(status: int, body: object, headers: Headers) -> Outcome:
    """The tenant-token endpoint: a refusal means the app id or secret is wrong, which a person
    must fix for the whole account (paused), not a reason to drop this one message."""
    code = field(body, "code")
    reason = "tenant token: " + reason_prefix(status, "feishu", code, field(body, "msg"))
    if code == 0 and 200 <= status < 300 and isinstance(field(body, "tenant_access_token"), str):
        return OK
    if code in RATE_LIMIT_CODES or status == 429:
        return Outcome("rate_limited", reason, _rate_delay(headers), status)
    if status >= 500 or status == 408:
        return Outcome("retry", reason, retry_after(headers), status)
    if isinstance(code, int) and code != 0:
        return Outcome("paused", reason, http_status=status)
    return by_status(status, headers, reason) if status >= 300 else Outcome("retry", reason, http_status=status)


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
        if isinstance(reply, Reply) and field(reply.body, "code") in TOKEN_INVALID_CODES:
            # Revoked or rotated before its expiry: fetch a fresh one and try exactly once more.
            self.token.invalidate(token)
            token = await self._tenant_token()
            if isinstance(token, Outcome):
                return token
            reply = await self._post(entry, token)
        if isinstance(reply, Outcome):
            return reply
        return classify(reply.status, reply.body, reply.headers)

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
            outcome = classify_token(reply.status, reply.body, reply.headers)
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
    # Imported here: only an encrypted webhook needs it, and `cryptography` costs a light
    # command (`delivery list`, which reads this module's address rule) ~30 ms.
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    padder = padding.PKCS7(AES_BLOCK_BYTES * 8).padder()
    plain = padder.update(json.dumps(event).encode()) + padder.finalize()
    encryptor = Cipher(algorithms.AES(_aes_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(plain) + encryptor.finalize()).decode()


def event_signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    """`X-Lark-Signature`: SHA-256 hex of timestamp + nonce + encrypt key + the raw body."""
    return hashlib.sha256(timestamp.encode() + nonce.encode() + encrypt_key.encode() + body).hexdigest()


# --- the webhook (SPEC 5, 11) --------------------------------------------------------------------


def check_webhook_headers(request: WebhookRequest) -> None:
    """Feishu's token is in the body; before it arrives, only that we could check it."""
    request.secret(_keys(request.account).verification_token_env, "verificationTokenEnv")


def verify_token(event: JsonObject, request: WebhookRequest) -> None:
    """Feishu puts its verification token in the body: `token` (schema 1 and the URL
    challenge) or `header.token` (schema 2)."""
    secret = request.secret(_keys(request.account).verification_token_env, "verificationTokenEnv")
    header = event.get("header")
    given = event.get("token") or (header.get("token") if isinstance(header, dict) else None)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), secret.encode()):
        raise UnauthorizedError("bad Feishu verification token")


def _decrypted(data: JsonObject, request: WebhookRequest) -> JsonObject:
    """An encrypted event (`encryptKeyEnv`): the signature headers, when sent, must match; the
    body must decrypt with the key; the verification token inside is then checked as usual."""
    env_name = _keys(request.account).encrypt_key_env
    key = request.env.get(env_name) if env_name else None
    if not key:
        raise UnauthorizedError("encrypted Feishu event, but encryptKeyEnv is not configured for this account")
    headers = request.headers
    signature = headers.get("x-lark-signature")
    if signature is not None:
        stamp, nonce = headers.get("x-lark-request-timestamp", ""), headers.get("x-lark-request-nonce", "")
        if not hmac.compare_digest(signature, event_signature(stamp, nonce, key, request.body)):
            raise UnauthorizedError("bad Feishu event signature")
    encrypted = data.get("encrypt")
    if not isinstance(encrypted, str):
        raise BadRequestError("encrypt: must be a string")
    try:
        return decrypt_event(encrypted, key)
    except FeishuDecryptError as exc:
        raise UnauthorizedError(f"encrypted Feishu event refused: {exc}") from None


def parse_webhook(request: WebhookRequest) -> Event:
    data = request.json()
    if "encrypt" in data:
        data = _decrypted(data, request)
    verify_token(data, request)
    if data.get("type") == "url_verification":
        return Event(challenge=str(data.get("challenge", "")))
    head = json_dict(data.get("header"))
    if head.get("event_type") != "im.message.receive_v1":
        return Event(ignored=f"feishu event {head.get('event_type')!r}")
    event = json_dict(data.get("event"))
    sender = json_dict(json_dict(event.get("sender")).get("sender_id")).get("open_id")
    text = _webhook_text(json_dict(event.get("message")).get("content"))
    return message_event(sender, text, "event.sender.sender_id.open_id", "event.message.content", head.get("event_id"))


def _webhook_text(content: Any) -> str | None:
    # Feishu sends the message content as a JSON string inside the JSON body.
    if not isinstance(content, str):
        return None
    try:
        inner = strict_json.loads(content)
    except strict_json.JsonInputError:
        return None
    text = inner.get("text") if isinstance(inner, dict) else None
    return text if isinstance(text, str) else None


# --- the long connection (SPEC 11): the official SDK's websocket event subscription ------------
#
# `POST /callback/ws/endpoint {"AppID", "AppSecret"}` gives a `wss://` URL (with `device_id` and
# `service_id` in its query) and the client's timing (`ClientConfig.PingInterval`). Frames are
# protobuf `pbbp2.Frame` messages (proto2): SeqID=1, LogID=2 (uint64), service=3, method=4
# (int32; 0 control, 1 data), headers=5 (repeated Header{key=1, value=2}), payload_encoding=6,
# payload_type=7, payload=8 (bytes), LogIDNew=9. Control frames carry `type` ping / pong; a data
# frame with `type` event carries the event JSON, possibly split (`sum` parts, `seq` index, one
# `message_id`), and is acknowledged by sending the same frame back with payload `{"code": 200}`.
# The codec is hand-written (two message types, varints and length-delimited fields): the
# `protobuf` runtime would be a new dependency for 60 lines.

ENDPOINT_PATH = "/callback/ws/endpoint"
METHOD_CONTROL, METHOD_DATA = 0, 1
DEFAULT_PING_SECONDS = 120.0


@attrs.define
class Frame:
    seq_id: int = 0
    log_id: int = 0
    service: int = 0
    method: int = 0
    headers: list[tuple[str, str]] = attrs.Factory(list)
    payload_encoding: str | None = None
    payload_type: str | None = None
    payload: bytes | None = None
    log_id_new: str | None = None

    def header(self, key: str) -> str | None:
        return next((v for k, v in self.headers if k == key), None)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int32 negatives travel as 64-bit two's complement, as protobuf does
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _key(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _bytes_field(field_number: int, data: bytes) -> bytes:
    return _key(field_number, 2) + _varint(len(data)) + data


def encode_frame(frame: Frame) -> bytes:
    out = bytearray()
    for number, value in ((1, frame.seq_id), (2, frame.log_id), (3, frame.service), (4, frame.method)):
        out += _key(number, 0) + _varint(value)
    for key, text in frame.headers:
        out += _bytes_field(5, _bytes_field(1, key.encode()) + _bytes_field(2, text.encode()))
    for number, optional in ((6, frame.payload_encoding), (7, frame.payload_type)):
        if optional is not None:
            out += _bytes_field(number, optional.encode())
    if frame.payload is not None:
        out += _bytes_field(8, frame.payload)
    if frame.log_id_new is not None:
        out += _bytes_field(9, frame.log_id_new.encode())
    return bytes(out)


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _read_varint(data, at)
            if at + size > len(data):
                raise ValueError("truncated field")
            yield number, data[at : at + size]
            at += size
        else:
            raise ValueError(f"unsupported wire type {wire}")


def _int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value


def decode_frame(data: bytes) -> Frame:
    """Raises ValueError for bytes that are not a Frame."""
    frame = Frame()
    for number, value in _fields(data):
        if isinstance(value, int):
            if number in (1, 2):
                setattr(frame, "seq_id" if number == 1 else "log_id", value)
            elif number in (3, 4):
                setattr(frame, "service" if number == 3 else "method", _int32(value))
        elif number == 5:
            parts = dict(_fields(value))
            key, text = parts.get(1, b""), parts.get(2, b"")
            if isinstance(key, bytes) and isinstance(text, bytes):
                frame.headers.append((key.decode(), text.decode()))
        elif number == 8:
            frame.payload = value
        elif number in (6, 7, 9):
            name = {6: "payload_encoding", 7: "payload_type", 9: "log_id_new"}[number]
            setattr(frame, name, value.decode())
    return frame


def heard_event(event: object) -> Heard | None:
    """An `im.message.receive_v1` text message from a person, or None."""
    if not isinstance(event, dict):
        return None
    header = event.get("header")
    if not isinstance(header, dict) or header.get("event_type") != "im.message.receive_v1":
        return None
    body = event.get("event")
    sender = body.get("sender") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(sender, dict) or sender.get("sender_type") not in (None, "user") or not isinstance(message, dict):
        return None
    sender_id = sender.get("sender_id")
    open_id = sender_id.get("open_id") if isinstance(sender_id, dict) else None
    try:
        content = json.loads(message.get("content") or "")
    except (TypeError, ValueError):
        return None
    text = content.get("text") if isinstance(content, dict) else None
    ident = header.get("event_id") or message.get("message_id")
    if not isinstance(open_id, str) or not open_id or not isinstance(text, str) or not text.strip() or not ident:
        return None
    return Heard(str(ident), open_id, text)


@attrs.define
class FeishuListener:
    """The long connection: events arrive as protobuf data frames on a websocket; each is
    acknowledged (the same frame back, payload `{"code": 200}`) only after its turn is durable;
    pings every `PingInterval`; split events are joined by `message_id`."""

    http: JsonClient
    app_id: str
    app_secret: str
    account_id: str
    connect: WebSocketConnect
    channel: str = "feishu"
    ping_seconds: float = DEFAULT_PING_SECONDS
    _parts: dict[str, list[bytes | None]] = attrs.Factory(dict)

    @classmethod
    def open(
        cls,
        base_url: str,
        app_id: str,
        app_secret: str,
        account_id: str,
        transport: AsyncBaseTransport,
        connect: WebSocketConnect,
    ) -> FeishuListener:
        http = JsonClient.open(base_url, transport, secrets=[app_secret])
        return cls(http, app_id, app_secret, account_id, connect)

    async def _endpoint(self) -> tuple[str, int]:
        reply = await post_json(
            self.http, ENDPOINT_PATH, {"AppID": self.app_id, "AppSecret": self.app_secret}, read_seconds=20.0
        )
        code = field(reply, "code")
        data = field(reply, "data")
        url = field(data, "URL")
        if code in (403, 514) or (isinstance(code, int) and code > 1000 and code != 1000040343):
            raise AuthFailed(f"ws endpoint: code {code} {field(reply, 'msg') or ''}".strip())
        if code != 0 or not isinstance(url, str):
            raise ListenError(f"ws endpoint: code {code}")
        interval = field(field(data, "ClientConfig"), "PingInterval")
        if isinstance(interval, (int, float)) and interval > 0:
            self.ping_seconds = float(interval)
        service = urllib.parse.parse_qs(urllib.parse.urlparse(url).query).get("service_id", ["0"])[0]
        return url, int(service) if service.isdigit() else 0

    async def listen(self, intake: Intake) -> None:
        url, service = await self._endpoint()
        try:
            async with self.connect(url) as ws, trio.open_nursery() as nursery:
                nursery.start_soon(self._ping, ws, service)
                intake.connected()
                while True:
                    raw = await ws.get_message()
                    await self._frame(ws, raw if isinstance(raw, bytes) else raw.encode(), intake)
        except Exception as exc:  # cancellation is not an Exception: it passes untouched
            raise socket_error(exc, "long connection") from None

    async def _ping(self, ws: Any, service: int) -> None:
        while True:
            ping = Frame(service=service, method=METHOD_CONTROL, headers=[("type", "ping")])
            await ws.send_message(encode_frame(ping))
            await trio.sleep(self.ping_seconds)

    async def _frame(self, ws: Any, raw: bytes, intake: Intake) -> None:
        try:
            frame = decode_frame(raw)
        except ValueError as exc:
            raise ListenError(f"long connection sent a frame that is not a Frame: {exc}") from None
        if frame.method != METHOD_DATA or frame.header("type") != "event":
            return  # pong (maybe with new timing), ping, card: nothing to hear
        payload = self._joined(frame)
        if payload is None:
            return
        try:
            event = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            event = None
        found = heard_event(event)
        if found is not None:
            await intake.accept(found)
        # Acknowledged after acceptance, never before: the platform redelivers what it was not told.
        ack = attrs.evolve(frame, payload=json.dumps({"code": 200}).encode(), headers=[*frame.headers, ("biz_rt", "0")])
        await ws.send_message(encode_frame(ack))

    def _joined(self, frame: Frame) -> bytes | None:
        total = int(frame.header("sum") or "1")
        if total <= 1:
            return frame.payload or b""
        ident, index = frame.header("message_id") or "", int(frame.header("seq") or "0")
        parts = self._parts.setdefault(ident, [None] * total)
        if 0 <= index < total:
            parts[index] = frame.payload or b""
        if any(p is None for p in parts):
            return None
        del self._parts[ident]
        return b"".join(p for p in parts if p is not None)

    async def stop(self) -> None:
        # The websocket was closed (close frame, bounded) when the listener's scope exited.
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()


# --- the record the registry lists -------------------------------------------------------------


@attrs.frozen
class FeishuAccount(AccountConfig):
    """A Feishu app: its id and secret; the webhook's verification token and encrypt key (SPEC
    5, 11). Secrets are named by environment variable."""

    app_id: str | None = None
    app_secret_env: str | None = None
    verification_token_env: str | None = None
    encrypt_key_env: str | None = None


def _keys(account: AccountConfig) -> FeishuAccount:
    return account_as(FeishuAccount, account)


def _check_account(a: AccountSpec) -> None:
    _ = a.base_url
    a.required("appId", _keys(a.account).app_id)
    a.secret("appSecretEnv", _keys(a.account).app_secret_env)


def _open_sender(a: AccountSpec) -> FeishuChannel:
    keys = _keys(a.account)
    app_id = a.required("appId", keys.app_id)
    return FeishuChannel.open(a.base_url, app_id, a.secret("appSecretEnv", keys.app_secret_env), a.transport())


def _open_listener(a: AccountSpec, connect: WebSocketConnect) -> FeishuListener:
    keys = _keys(a.account)
    app_id = a.required("appId", keys.app_id)
    secret = a.secret("appSecretEnv", keys.app_secret_env)
    return FeishuListener.open(a.base_url, app_id, secret, a.account_id, a.transport(), connect)


KIND = ChannelKind(
    name="feishu",
    address=ADDRESS,
    accounts=AccountKind(FeishuAccount, require_base_url),
    classify=classify,
    open_sender=_open_sender,
    check_account=_check_account,
    default_mode=lambda _: "socket",
    listeners={"socket": _open_listener},
    webhook=Webhook(check_webhook_headers, parse_webhook),
)
