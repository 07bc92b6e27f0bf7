"""`POST /channels/{channel}/{accountId}/events`: verify a platform's webhook, then read the
one thing the gateway needs from it: who wrote what (or the URL-verification challenge).

Only channels with a verification scheme we can check are accepted: Slack (signing secret),
Telegram (secret token header) and Feishu (verification token; encrypted events with
`encryptKeyEnv`, their signature headers checked when sent). Anything
else is refused with 401 rather than trusted.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from trio_gateway.channels import feishu
from trio_gateway.errors import BadRequestError, UnauthorizedError
from trio_gateway.http import auth
from trio_gateway.http.body import JsonObject, json_object
from trio_gateway.policy import strict_json
from trio_gateway.policy.config import AccountConfig


@attrs.frozen
class Message:
    to: str  # where a reply goes: the conversation or sender on that channel
    text: str
    # The platform's id for the event (Slack `event_id`, Telegram `update_id`, Feishu
    # `header.event_id`): a retried delivery carries the same one and is not a second turn.
    event_id: str | None = None


@attrs.frozen
class Event:
    message: Message | None = None
    challenge: str | None = None
    ignored: str | None = None


def check_headers(
    channel: str,
    headers: Mapping[str, str],
    account: AccountConfig,
    env: Mapping[str, str],
    wall_time: Callable[[], float],
) -> None:
    """Everything that can refuse an event before its body is read (401)."""
    if channel == "slack":
        auth.check_slack_headers(headers, account, env, wall_time)
    elif channel == "telegram":
        auth.verify_telegram(headers, account, env)
    elif channel == "feishu":
        auth.check_feishu_configured(account, env)
    else:
        raise UnauthorizedError(f"channel {channel!r} has no inbound verification the gateway can check")


def parse(
    channel: str,
    headers: Mapping[str, str],
    body: bytes,
    account: AccountConfig,
    env: Mapping[str, str],
    wall_time: Callable[[], float],
) -> Event:
    if channel == "slack":
        auth.verify_slack(headers, body, account, env, wall_time)
        return _slack(json_object(body))
    if channel == "telegram":
        auth.verify_telegram(headers, account, env)
        return _telegram(json_object(body))
    if channel == "feishu":
        data = json_object(body)
        if "encrypt" in data:
            data = _feishu_decrypted(data, headers, body, account, env)
        auth.verify_feishu(data, account, env)
        return _feishu(data)
    raise UnauthorizedError(f"channel {channel!r} has no inbound verification the gateway can check")


def _feishu_decrypted(
    data: JsonObject, headers: Mapping[str, str], body: bytes, account: AccountConfig, env: Mapping[str, str]
) -> JsonObject:
    """An encrypted event (`encryptKeyEnv`): the signature headers, when sent, must match; the
    body must decrypt with the key; the verification token inside is then checked as usual."""
    key = env.get(account.encrypt_key_env) if account.encrypt_key_env else None
    if not key:
        raise UnauthorizedError("encrypted Feishu event, but encryptKeyEnv is not configured for this account")
    signature = headers.get("x-lark-signature")
    if signature is not None:
        stamp, nonce = headers.get("x-lark-request-timestamp", ""), headers.get("x-lark-request-nonce", "")
        if not hmac.compare_digest(signature, feishu.event_signature(stamp, nonce, key, body)):
            raise UnauthorizedError("bad Feishu event signature")
    encrypted = data.get("encrypt")
    if not isinstance(encrypted, str):
        raise BadRequestError("encrypt: must be a string")
    try:
        return feishu.decrypt_event(encrypted, key)
    except feishu.FeishuDecryptError as exc:
        raise UnauthorizedError(f"encrypted Feishu event refused: {exc}") from None


def _dict(value: object) -> JsonObject:
    return value if isinstance(value, dict) else {}


def _slack(data: JsonObject) -> Event:
    if data.get("type") == "url_verification":
        return Event(challenge=str(data.get("challenge", "")))
    event = _dict(data.get("event"))
    if event.get("type") != "message" or event.get("bot_id") or event.get("subtype"):
        # Our own replies come back as bot messages: answering them would loop forever.
        return Event(ignored=f"slack event {event.get('type')!r} {event.get('subtype') or ''}".strip())
    return _message(event.get("channel"), event.get("text"), "event.channel", "event.text", data.get("event_id"))


def _telegram(data: JsonObject) -> Event:
    message = _dict(data.get("message") or data.get("edited_message"))
    if not message:
        return Event(ignored="telegram update without a message")
    chat = _dict(message.get("chat"))
    chat_id = chat.get("id")
    return _message(
        str(chat_id) if isinstance(chat_id, int) else None,
        message.get("text"),
        "message.chat.id",
        "message.text",
        data.get("update_id"),
    )


def _feishu(data: JsonObject) -> Event:
    if data.get("type") == "url_verification":
        return Event(challenge=str(data.get("challenge", "")))
    header = _dict(data.get("header"))
    if header.get("event_type") != "im.message.receive_v1":
        return Event(ignored=f"feishu event {header.get('event_type')!r}")
    event = _dict(data.get("event"))
    sender = _dict(_dict(event.get("sender")).get("sender_id")).get("open_id")
    message = _dict(event.get("message"))
    text = _feishu_text(message.get("content"))
    return _message(sender, text, "event.sender.sender_id.open_id", "event.message.content", header.get("event_id"))


def _feishu_text(content: Any) -> str | None:
    # Feishu sends the message content as a JSON string inside the JSON body.
    if not isinstance(content, str):
        return None
    try:
        inner = strict_json.loads(content)
    except strict_json.JsonInputError:
        return None
    text = inner.get("text") if isinstance(inner, dict) else None
    return text if isinstance(text, str) else None


def _message(to: object, text: object, to_field: str, text_field: str, event_id: object = None) -> Event:
    if not isinstance(to, str) or not to:
        raise BadRequestError(f"{to_field}: missing sender")
    if not isinstance(text, str) or not text.strip():
        return Event(ignored=f"{text_field}: no text")
    ident = (
        str(event_id)
        if isinstance(event_id, (str, int)) and not isinstance(event_id, bool) and event_id != ""
        else None
    )
    return Event(message=Message(to, text, ident))
