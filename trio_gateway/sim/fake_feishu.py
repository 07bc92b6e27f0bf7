"""A fake Feishu long connection (SPEC 11): the websocket event subscription as the official SDK
speaks it, protobuf `pbbp2.Frame`s over a real trio-websocket connection on in-memory streams.

Each `push` becomes an `im.message.receive_v1` event in a data frame (split in two parts with
`split=True`, as the platform does for large events); pings get pongs; an event not acknowledged
(the frame back with payload `{"code": 200}`) is sent again on the next connection. Steering:
`push(text, open_id)`, `drop_connection()`, `reject_auth()` (the endpoint answers code 514).
"""

from __future__ import annotations

import itertools
import json
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import trio
import trio_websocket

from trio_gateway.channels.feishu import METHOD_CONTROL, METHOD_DATA, Frame, decode_frame, encode_frame
from trio_gateway.sim.fake_inbound import SteerableSocket, in_memory_websocket

HOST = "feishu-ws.fake.invalid"
SERVICE_ID = 7


@attrs.define
class FakeFeishuSocket(SteerableSocket):
    events: list[tuple[str, bytes]] = attrs.Factory(list)  # (message_id, event JSON)
    acked: set[str] = attrs.Factory(set)
    pings: int = 0
    split: bool = False
    _ids: itertools.count[int] = attrs.Factory(lambda: itertools.count(1))

    def push(self, text: str, open_id: str | None = None, *, bot: bool = False) -> str:
        n = next(self._ids)
        event_id = f"fs-ev-{n}"
        event = {
            "schema": "2.0",
            "header": {"event_id": event_id, "event_type": "im.message.receive_v1", "app_id": "cli_fake_app"},
            "event": {
                "sender": {
                    "sender_id": {"open_id": open_id or "ou_fake_user"},
                    "sender_type": "app" if bot else "user",
                },
                "message": {"message_id": f"om_{n}", "message_type": "text", "content": json.dumps({"text": text})},
            },
        }
        self.events.append((f"msg-{n}", json.dumps(event).encode()))
        self._wake()
        return event_id

    def unacked(self) -> list[tuple[str, bytes]]:
        return [(m, p) for m, p in self.events if m not in self.acked]

    def endpoint_answer(self) -> dict[str, Any]:
        if self.auth_rejected:
            return {"code": 514, "msg": "auth failed"}
        url = f"wss://{HOST}/ws/v2?device_id=dev-{self.connections + 1}&service_id={SERVICE_ID}"
        return {"code": 0, "data": {"URL": url, "ClientConfig": {"PingInterval": 90, "ReconnectCount": -1}}}

    def connect(self, url: str) -> AbstractAsyncContextManager[trio_websocket.WebSocketConnection]:
        return in_memory_websocket(HOST, "/ws/v2", self._serve)

    async def _stream(self, ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream) -> None:
        drops = self._drops
        sent: set[str] = set()
        while self._drops == drops:
            changed = self._changed
            for message_id, payload in self.unacked():
                if message_id not in sent:
                    await self._send_event(ws, message_id, payload)
                    sent.add(message_id)
            await changed.wait()
        await stream.aclose()  # dropped without a close frame

    async def _send_event(self, ws: trio_websocket.WebSocketConnection, message_id: str, payload: bytes) -> None:
        parts = [payload[: len(payload) // 2], payload[len(payload) // 2 :]] if self.split else [payload]
        for index, part in enumerate(parts):
            headers = [("type", "event"), ("message_id", message_id), ("sum", str(len(parts))),
                       ("seq", str(index)), ("trace_id", f"trace-{message_id}")]  # fmt: skip
            frame = Frame(seq_id=index, service=SERVICE_ID, method=METHOD_DATA, headers=headers, payload=part)
            await ws.send_message(encode_frame(frame))

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        while True:
            raw = await ws.get_message()
            frame = decode_frame(raw if isinstance(raw, bytes) else raw.encode())
            if frame.method == METHOD_CONTROL and frame.header("type") == "ping":
                self.pings += 1
                pong = Frame(service=SERVICE_ID, method=METHOD_CONTROL, headers=[("type", "pong")])
                await ws.send_message(encode_frame(pong))
            elif frame.method == METHOD_DATA and json.loads(frame.payload or b"{}").get("code") == 200:
                self.acked.add(frame.header("message_id") or "")
