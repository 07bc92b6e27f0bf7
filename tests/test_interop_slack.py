"""Slack as slack_sdk (the official SDK, `interop` extra) speaks it: `apps.connections.open`,
Socket Mode acknowledgements and the Events API signature (issue 24)."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from trio_gateway import upstream as http_client
from trio_gateway.channels.inbound import Heard
from trio_gateway.channels.slack import SlackAccount, SlackSocketListener
from trio_gateway.errors import UnauthorizedError
from trio_gateway.http import inbound

pytestmark = pytest.mark.interop

slack_sdk = pytest.importorskip("slack_sdk")
from slack_sdk.signature import SignatureVerifier  # noqa: E402
from slack_sdk.socket_mode.request import SocketModeRequest  # noqa: E402
from slack_sdk.socket_mode.response import SocketModeResponse  # noqa: E402

APP_TOKEN = "xapp-1-A111-222-abc"
Seen = tuple[str, str, str, bytes, str]  # method, path, content type, body, authorization


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[Seen]]]:
    """A loopback HTTP server that answers `apps.connections.open` and records each request."""
    seen: list[Seen] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append((self.command, self.path, self.headers.get("content-type", ""), body,
                         self.headers.get("authorization", "")))  # fmt: skip
            answer = json.dumps({"ok": True, "url": "wss://slack.fake.invalid/link"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api", seen
    finally:
        server.shutdown()
        thread.join(timeout=10)


async def test_apps_connections_open_is_sent_as_slack_sdk_sends_it(recording_server: tuple[str, list[Seen]]) -> None:
    """slack_sdk posts Web API arguments as a form (application/x-www-form-urlencoded)."""
    base, seen = recording_server

    def sdk_call() -> None:
        slack_sdk.WebClient(base_url=base + "/", timeout=10).apps_connections_open(app_token=APP_TOKEN)

    with trio.fail_after(30):
        await trio.to_thread.run_sync(sdk_call)
    listener = SlackSocketListener.open(base, APP_TOKEN, "app1", http_client.AsyncHTTPTransport(), connect=None)  # type: ignore[arg-type]
    try:
        with trio.fail_after(30):
            assert await listener._url() == "wss://slack.fake.invalid/link"
    finally:
        await listener.aclose()
    theirs, ours = seen
    assert ours == theirs
    assert ours[2] == "application/x-www-form-urlencoded"


class _Socket:
    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send_message(self, message: str | bytes) -> None:
        self.sent.append(message)


class _Intake:
    def __init__(self) -> None:
        self.heard: list[Heard] = []

    async def accept(self, heard: Heard) -> None:
        self.heard.append(heard)

    def connected(self) -> None:
        pass


ENVELOPE = {
    "envelope_id": "57d6a792-4d35-4d0b-b6aa-3361493e1caf",
    "type": "events_api",
    "accepts_response_payload": False,
    "retry_attempt": 0,
    "retry_reason": "",
    "payload": {
        "type": "event_callback",
        "event_id": "Ev01",
        "event": {"type": "message", "channel": "C024BE91L", "user": "U2147483697", "text": "hi", "ts": "1.000200"},
    },
}


async def test_a_socket_mode_envelope_is_acknowledged_as_slack_sdk_acknowledges_it() -> None:
    request = SocketModeRequest.from_dict(ENVELOPE)  # the SDK reads the envelope we handle
    assert request is not None
    socket, intake = _Socket(), _Intake()
    listener = SlackSocketListener(http=None, account_id="app1", connect=None)  # type: ignore[arg-type]
    await listener._envelope(socket, json.dumps(ENVELOPE), intake)  # type: ignore[arg-type]
    assert [h.text for h in intake.heard] == ["hi"]
    [ack] = socket.sent
    assert json.loads(ack) == SocketModeResponse(envelope_id=request.envelope_id).to_dict()


SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
ACCOUNT = SlackAccount(signing_secret_env="SLACK_SIGNING")
NOW = 1_700_000_000


class _Clock:
    def __init__(self, now: float) -> None:
        self._now = now

    def now(self) -> float:
        return self._now


def we_accept(headers: dict[str, str], body: bytes, now: float) -> bool:
    try:
        inbound.parse("slack", headers, body, ACCOUNT, {"SLACK_SIGNING": SECRET}, lambda: now)
    except UnauthorizedError:
        return False
    return True


BODY = json.dumps({"type": "event_callback", "event_id": "Ev02", "event": ENVELOPE["payload"]["event"]}).encode()  # type: ignore[index]


@pytest.mark.parametrize(
    ("age", "tamper"), [(0, False), (299, False), (-299, False), (301, False), (-301, False), (0, True)]
)
def test_signatures_and_the_replay_window_agree_with_slack_sdk(age: int, tamper: bool) -> None:
    stamp = str(NOW)
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=stamp, body=BODY)
    assert signature is not None
    body = BODY.replace(b"hi", b"ho") if tamper else BODY
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": signature}
    theirs = SignatureVerifier(SECRET, clock=_Clock(NOW + age)).is_valid(body, stamp, signature)  # type: ignore[arg-type]
    assert we_accept(headers, body, NOW + age) == theirs
