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
import math
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
    UNKNOWN_BOT,
    AuthFailed,
    BotSelf,
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
from trio_gateway.channels.markdown import PLAIN, TextForm
from trio_gateway.errors import BadRequestError, UnauthorizedError
from trio_gateway.policy import strict_json
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.upstream import AsyncBaseTransport, HTTPError

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
MESSAGES_PATH = "/open-apis/im/v1/messages"
BOT_INFO_PATH = "/open-apis/bot/v3/info"
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


# How a reply is sent (SPEC 15): a `text` message, Markdown as plain text. The request body may
# be 150 KB (https://open.feishu.cn/document/server-docs/im-v1/message/create); the text is
# JSON-escaped twice on its way into it (once into `content`, once into the body), so we cut at
# 20,000 UTF-8 bytes, which stays under it for any text.
TEXT = TextForm(20_000, "utf8", PLAIN)


def message_body(entry: DeliveryEntry) -> dict[str, str]:
    return {
        "receive_id": entry.to,
        "msg_type": "text",
        "content": json.dumps({"text": TEXT.render(entry.payload.text)}, ensure_ascii=False),
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

    async def whoami(self) -> BotSelf:
        """`GET /open-apis/bot/v3/info`: the bot's `open_id`, as `mentions` name it."""
        token = await self._tenant_token()
        if isinstance(token, Outcome):
            raise ListenError(f"tenant token: {token.reason}")
        try:
            response = await self.http.client.get(BOT_INFO_PATH, headers={"Authorization": f"Bearer {token}"})
            body = response.json()
        except (HTTPError, ValueError) as exc:
            raise ListenError(f"bot info: {type(exc).__name__}") from None
        open_id = field(field(body, "bot"), "open_id")
        if response.status_code in (401, 403):
            raise AuthFailed(f"bot info: HTTP {response.status_code}")
        if not isinstance(open_id, str):
            raise ListenError(f"bot info: code {field(body, 'code')}")
        return BotSelf(open_id)

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
    """An encrypted event (`encryptKeyEnv`): the signature headers must match (only the URL
    challenge may come without them); the body must decrypt with the key; the verification
    token inside is then checked as usual."""
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
        event = decrypt_event(encrypted, key)
    except FeishuDecryptError as exc:
        raise UnauthorizedError(f"encrypted Feishu event refused: {exc}") from None
    # As lark-oapi's dispatcher: only the URL challenge comes unsigned; any other encrypted
    # event without X-Lark-Signature is refused (the key alone would let a replayed body in).
    if signature is None and event.get("type") != "url_verification":
        raise UnauthorizedError("encrypted Feishu event without X-Lark-Signature")
    return event


def parse_webhook(request: WebhookRequest) -> Event:
    data = request.json()
    if "encrypt" in data:
        data = _decrypted(data, request)
    verify_token(data, request)
    if data.get("type") == "url_verification":
        return Event(challenge=str(data.get("challenge", "")))
    what = f"feishu event {json_dict(data.get('header')).get('event_type')!r}"
    return message_event(heard_event(data, request.me), what)


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
# The server's `PingInterval` (seconds; in the endpoint's answer and in any pong) is obeyed
# within these bounds: a hostile or broken 1e-9 must not make the listener spin, and 1e9 must
# not let the connection go silent until the platform drops it.
MIN_PING_SECONDS, MAX_PING_SECONDS = 5.0, 600.0


def ping_seconds(interval: object) -> float | None:
    """The server's `PingInterval` as seconds to wait, clamped; None when it is no number."""
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        return None
    if interval <= 0:
        return None
    return min(max(float(interval), MIN_PING_SECONDS), MAX_PING_SECONDS)


# Split events (a big event arrives as `sum` frames sharing a `message_id`), bounded: a header
# is the platform's word, not a size to allocate (`sum=150000000` was 1.19 GB), and an event
# whose parts never all come expires instead of being kept for the connection's life.
MAX_SPLIT_PARTS = 64
MAX_PENDING_SPLITS = 64
MAX_PENDING_SPLIT_BYTES = 16 * 1024 * 1024
SPLIT_EXPIRE_SECONDS = 30.0


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


# Wire types 1 (fixed64) and 5 (fixed32): their sizes, to skip them.
_FIXED_BYTES = {1: 8, 5: 4}


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
        elif wire in _FIXED_BYTES:
            # A fixed64 / fixed32 field this codec does not know: skipped, as the protobuf
            # runtime lark-oapi decodes with skips any unknown field (a newer server may add one).
            at += _FIXED_BYTES[wire]
            if at > len(data):
                raise ValueError("truncated field")
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


@attrs.define
class _Split:
    started: float
    parts: list[bytes | None]


@attrs.define
class SplitEvents:
    """The parts of split events heard so far, oldest first, within the bounds above: past
    `MAX_PENDING_SPLITS` events or `MAX_PENDING_SPLIT_BYTES` the oldest goes, and each goes
    `SPLIT_EXPIRE_SECONDS` after its first part (the platform redelivers what it was not
    acked, so a dropped event is heard again whole)."""

    pending: dict[str, _Split] = attrs.Factory(dict)
    size: int = 0
    dropped: int = 0

    def add(self, ident: str, total: int, index: int, payload: bytes, now: float) -> bytes | None:
        """The joined event when this part completes it, else None. `total` and `index` are
        checked by the caller (`split_header`)."""
        self._expire(now)
        split = self.pending.get(ident)
        if split is not None and len(split.parts) != total:
            self._drop(ident)
            split = None
        if split is None:
            split = self.pending[ident] = _Split(now, [None] * total)
        self.size += len(payload) - len(split.parts[index] or b"")
        split.parts[index] = payload
        if all(p is not None for p in split.parts):
            self._drop(ident, dropped=False)
            return b"".join(p for p in split.parts if p is not None)
        while len(self.pending) > MAX_PENDING_SPLITS or self.size > MAX_PENDING_SPLIT_BYTES:
            self._drop(next(iter(self.pending)))
        return None

    def _expire(self, now: float) -> None:
        for ident in [i for i, s in self.pending.items() if now - s.started >= SPLIT_EXPIRE_SECONDS]:
            self._drop(ident)

    def _drop(self, ident: str, *, dropped: bool = True) -> None:
        split = self.pending.pop(ident)
        self.size -= sum(len(p) for p in split.parts if p is not None)
        self.dropped += dropped


def split_header(frame: Frame) -> tuple[int, int] | None:
    """(sum, seq) of a data frame when both are sane, else None (the frame is not one we can
    use: ignored, never allocated for)."""
    total, index = frame.header("sum") or "1", frame.header("seq") or "0"
    if not (total.isdigit() and index.isdigit() and len(total) <= 6 and len(index) <= 6):
        return None
    if not 1 <= int(total) <= MAX_SPLIT_PARTS or int(index) >= int(total):
        return None
    return int(total), int(index)


# Message types that carry something other than text: a direct one gets the media notice.
_MEDIA_TYPES = frozenset({"image", "file", "audio", "media", "sticker"})


def heard_event(event: object, me: BotSelf = UNKNOWN_BOT) -> Heard | None:
    """An `im.message.receive_v1` message from a person, or None: the one reading for the long
    connection and the webhook alike. A group message answers to the group (`chat_id`), a
    direct one to the sender's `open_id`; `mentions` holding the bot address it, and their
    `@_user_N` placeholders are taken out of the text (another person's becomes `@name`)."""
    header = json_dict(event).get("header")
    if not isinstance(header, dict) or header.get("event_type") != "im.message.receive_v1":
        return None
    body = json_dict(json_dict(event).get("event"))
    sender, message = json_dict(body.get("sender")), json_dict(body.get("message"))
    if not sender or sender.get("sender_type") not in (None, "user") or not message:
        return None
    open_id = json_dict(sender.get("sender_id")).get("open_id")
    kind = message.get("message_type", "text")
    text = _webhook_text(message.get("content")) if kind == "text" else None
    media = kind in _MEDIA_TYPES
    ident = header.get("event_id") or message.get("message_id")
    if not isinstance(open_id, str) or not open_id or not ((text and text.strip()) or media):
        return None
    addressed, text = _mentions(text or "", message.get("mentions"), me)
    group = message.get("chat_type") == "group"
    chat_ident = message.get("chat_id")
    if group and not isinstance(chat_ident, str):
        return None
    return Heard(
        str(ident) if ident else None,  # none: a repeat cannot be recognised (a webhook's)
        str(chat_ident) if group else open_id,
        text,
        sender=open_id,
        chat="group" if group else "direct",
        addressed=addressed,
        media=media and not text.strip(),
    )


def _mentions(text: str, mentions: object, me: BotSelf) -> tuple[bool, str]:
    addressed = False
    for mention in mentions if isinstance(mentions, list) else []:
        key, name = json_dict(mention).get("key"), json_dict(mention).get("name")
        if not isinstance(key, str) or not key:
            continue
        is_bot = me.user_id is not None and json_dict(json_dict(mention).get("id")).get("open_id") == me.user_id
        addressed = addressed or is_bot
        text = text.replace(key, " " if is_bot else f"@{name}" if isinstance(name, str) else " ")
    return addressed, " ".join(text.split()) if addressed else text.strip()


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
    splits: SplitEvents = attrs.Factory(SplitEvents)
    # The bot (`bot/v3/info`), asked at the first group message: a mention of it addresses it.
    me: BotSelf | None = None

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
        self._configure(field(data, "ClientConfig"))
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
        if frame.method == METHOD_CONTROL and frame.header("type") == "pong" and frame.payload:
            self._configure(_json_or_none(frame.payload))  # lark-oapi: a pong may carry new timing
            return
        if frame.method != METHOD_DATA or frame.header("type") != "event":
            return  # ping, card: nothing to hear
        payload = self._joined(frame)
        if payload is None:
            return
        event = _json_or_none(payload)
        found = heard_event(event, self.me or UNKNOWN_BOT)
        if found is not None and found.chat == "group" and self.me is None:
            # Who the bot is matters only in a group: asked once, at the first group message.
            self.me = await FeishuChannel(self.http, self.app_id, self.app_secret).whoami()
            found = heard_event(event, self.me)
        if found is not None:
            await intake.accept(found)
        # Acknowledged after acceptance, never before: the platform redelivers what it was not told.
        ack = attrs.evolve(frame, payload=json.dumps({"code": 200}).encode(), headers=[*frame.headers, ("biz_rt", "0")])
        await ws.send_message(encode_frame(ack))

    def _configure(self, client_config: object) -> None:
        """`ClientConfig` from the endpoint or a pong: its `PingInterval`, clamped, from the
        next ping on (the other fields are reconnect timing, which our supervisor owns)."""
        interval = ping_seconds(field(client_config, "PingInterval"))
        if interval is not None:
            self.ping_seconds = interval

    def _joined(self, frame: Frame) -> bytes | None:
        """The whole event's payload, or None: a part of one still incomplete, or a frame
        whose split headers are not sane (ignored and not acked)."""
        header = split_header(frame)
        if header is None:
            self.splits.dropped += 1
            return None
        total, index = header
        if total == 1:
            return frame.payload or b""
        ident = frame.header("message_id") or ""
        return self.splits.add(ident, total, index, frame.payload or b"", trio.current_time())

    async def stop(self) -> None:
        # The websocket was closed (close frame, bounded) when the listener's scope exited.
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await self.http.aclose()


def _json_or_none(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


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


async def _whoami(a: AccountSpec) -> BotSelf:
    channel = _open_sender(a)
    try:
        return await channel.whoami()
    finally:
        await channel.aclose()


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
    webhook=Webhook(check_webhook_headers, parse_webhook, _whoami),
    text=TEXT,
)
