"""Feishu as lark-oapi (the official SDK, `interop` extra) speaks it: the long connection's
protobuf frames, unknown fields and the webhook's encryption and signature (issue 24)."""

from __future__ import annotations

import json
import time

import pytest

from trio_gateway.channels.feishu import (
    FeishuAccount,
    Frame,
    decode_frame,
    encode_frame,
    encrypt_event,
    event_signature,
)
from trio_gateway.errors import UnauthorizedError
from trio_gateway.http import inbound

pytestmark = pytest.mark.interop

# Importing lark_oapi imports the whole SDK (a few seconds): once, for the whole module.
pbbp2 = pytest.importorskip("lark_oapi.ws.pb.pbbp2_pb2")
lark_event = pytest.importorskip("lark_oapi.event.dispatcher_handler")
lark_model = pytest.importorskip("lark_oapi.core.model")

KEY, TOKEN = "fs-encrypt-key", "fs-verify"
ACCOUNT = FeishuAccount(verification_token_env="FS_VERIFY", encrypt_key_env="FS_KEY")
ENV = {"FS_VERIFY": TOKEN, "FS_KEY": KEY}


def lark_frame(frame: Frame) -> bytes:
    theirs = pbbp2.Frame(SeqID=frame.seq_id, LogID=frame.log_id, service=frame.service, method=frame.method)
    for key, value in frame.headers:
        theirs.headers.add(key=key, value=value)
    for name, value in (("payload_encoding", frame.payload_encoding), ("payload_type", frame.payload_type),
                        ("payload", frame.payload), ("LogIDNew", frame.log_id_new)):  # fmt: skip
        if value is not None:
            setattr(theirs, name, value)
    return bytes(theirs.SerializeToString())


FRAMES = [
    Frame(),
    Frame(1, 2**63 + 5, -3, 1, [("type", "event"), ("sum", "2"), ("seq", "1")], "gzip", "json", b"{}", "log-9"),
    Frame(seq_id=7, service=7, method=0, headers=[("type", "pong")], payload=b'{"PingInterval": 90}'),
]


@pytest.mark.parametrize("frame", FRAMES)
def test_frames_encode_byte_for_byte_as_lark_oapi_and_decode_its_bytes(frame: Frame) -> None:
    assert encode_frame(frame) == lark_frame(frame)
    assert decode_frame(lark_frame(frame)) == frame


def test_an_unknown_fixed32_or_fixed64_field_is_skipped_as_lark_oapi_skips_it() -> None:
    """Wire type 5 (fixed32, field 10) and 1 (fixed64, field 11), fields a newer server might add."""
    frame = FRAMES[1]
    extra = bytes([10 << 3 | 5]) + b"\x01\x02\x03\x04" + bytes([11 << 3 | 1]) + b"\x05" * 8
    theirs = pbbp2.Frame()
    theirs.ParseFromString(lark_frame(frame) + extra)  # the SDK's runtime: no error
    assert theirs.SeqID == frame.seq_id
    assert decode_frame(lark_frame(frame) + extra) == frame


def _encrypted(event: dict[str, object], *, signed: bool) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"encrypt": encrypt_event(event, KEY, b"0123456789abcdef")}).encode()
    headers = {"x-lark-request-timestamp": "1700000000", "x-lark-request-nonce": "n1"}
    if signed:
        headers["x-lark-signature"] = event_signature("1700000000", "n1", KEY, body)
    return headers, body


def lark_accepts(headers: dict[str, str], body: bytes) -> bool:
    """The SDK's own webhook handler, with the same key and verification token."""
    handler = (
        lark_event.EventDispatcherHandler.builder(KEY, TOKEN)
        .register_p2_im_message_receive_v1(lambda _event: None)
        .build()
    )
    request = lark_model.RawRequest()
    request.uri = "/events"
    # The SDK reads its headers by their canonical spelling (X-Lark-Signature).
    request.headers = {"-".join(w.capitalize() for w in k.split("-")): v for k, v in headers.items()}
    request.body = body
    return bool(handler.do(request).status_code == 200)


def we_accept(headers: dict[str, str], body: bytes) -> bool:
    try:
        inbound.parse("feishu", headers, body, ACCOUNT, ENV, time.time)
    except UnauthorizedError:
        return False
    return True


MESSAGE = {
    "schema": "2.0",
    "header": {
        "event_id": "ev-1",
        "event_type": "im.message.receive_v1",
        "token": TOKEN,
        "app_id": "cli_x",
        "create_time": "1700000000000",
        "tenant_key": "t",
    },
    "event": {
        "sender": {"sender_id": {"open_id": "ou_1"}, "sender_type": "user"},
        "message": {"message_id": "om_1", "message_type": "text", "content": json.dumps({"text": "hi"})},
    },
}
CHALLENGE = {"type": "url_verification", "challenge": "c-1", "token": TOKEN}


@pytest.mark.parametrize(
    ("event", "signed", "accepted"),
    [(MESSAGE, True, True), (MESSAGE, False, False), (CHALLENGE, False, True), (CHALLENGE, True, True)],
    ids=["signed-message", "unsigned-message", "unsigned-challenge", "signed-challenge"],
)
def test_encrypted_webhooks_are_accepted_and_refused_as_lark_oapi_does(
    event: dict[str, object], signed: bool, accepted: bool
) -> None:
    headers, body = _encrypted(event, signed=signed)
    assert (lark_accepts(headers, body), we_accept(headers, body)) == (accepted, accepted)


def test_a_forged_signature_is_refused_by_both() -> None:
    headers, body = _encrypted(MESSAGE, signed=True)
    headers["x-lark-signature"] = "0" * 64
    assert (lark_accepts(headers, body), we_accept(headers, body)) == (False, False)
