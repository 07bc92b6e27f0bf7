"""The HTTP API (SPEC 5), in-process: the ASGI app driven directly on MockClock, plus one test
through real hypercorn on a loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_gateway
from trio_gateway.channels import registry
from trio_gateway.http.app import GatewayApp
from trio_gateway.http.asgi import Message
from trio_gateway.http.server import HttpServer
from trio_gateway.log import MemorySink
from trio_gateway.policy import config as cfg
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import build_gateway, quick_config

TOKEN = "test-token-123"
AUTH = {"authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0
SLACK_SECRET = "slack-signing-secret"
# These tests are about webhooks, not access (tests/test_access*.py): anyone, anywhere.
OPEN = {"dmPolicy": "open", "groupPolicy": "open"}
CHANNELS = {
    "channels": {
        "slack": {"accounts": {"T1": {"baseUrl": "http://127.0.0.1:9", "signingSecretEnv": "SLACK_SIGNING", **OPEN}}},
        "telegram": {"accounts": {"bot1": {"baseUrl": "http://127.0.0.1:9", "secretTokenEnv": "TG_SECRET", **OPEN}}},
        "feishu": {
            "accounts": {
                "app1": {
                    "baseUrl": "http://127.0.0.1:9",
                    "verificationTokenEnv": "FEISHU_VERIFY",
                    "encryptKeyEnv": "FEISHU_ENCRYPT",
                    **OPEN,
                }
            }
        },
        "discord": {"accounts": {"d1": {"baseUrl": "http://127.0.0.1:9"}}},
    },
    "agents": {"main": {"channels": ["console", "slack", "telegram", "feishu", "discord"]}},
}
ENV = {
    "SLACK_SIGNING": SLACK_SECRET,
    "TG_SECRET": "tg-secret",
    "FEISHU_VERIFY": "fs-verify",
    "FEISHU_ENCRYPT": "fs-encrypt-key",
}


@attrs.frozen
class Reply:
    status: int
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define
class Driver:
    """A minimal ASGI server: one request, the body in one message, then (optionally) the
    client leaving when `disconnect` is set."""

    app: GatewayApp
    disconnect: trio.Event = attrs.Factory(trio.Event)

    async def __call__(
        self, method: str, path: str, body: object = None, headers: dict[str, str] | None = None
    ) -> Reply:
        raw = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        hdrs = {**AUTH, **(headers or {})}
        scope = {
            "type": "http",
            "method": method,
            "path": path.partition("?")[0],
            "query_string": path.partition("?")[2].encode(),
            "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()],
        }
        sent: list[Message] = []
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": raw, "more_body": False}
            await self.disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start, body_msg = sent
        return Reply(start["status"], body_msg["body"])


@attrs.define
class Running:
    gateway: Gateway
    sink: MemorySink
    call: Driver


def config() -> cfg.Config:
    raw: dict[str, Any] = json.loads(json.dumps(CHANNELS))
    raw["gateway"] = {
        "testEndpoints": {"enabled": True},
        "stalledTaskDetection": {"enabled": False},
        "drain": {"timeoutSeconds": 10},
    }
    return cfg.parse(raw, registry.account_kinds())


@pytest.fixture
async def running(tmp_path: Path, autojump_clock: trio.abc.Clock) -> AsyncIterator[Running]:
    gateway, sink = build_gateway(tmp_path, config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        yield Running(gateway, sink, Driver(GatewayApp(gateway, TOKEN, ENV, wall_time=lambda: NOW)))
        if gateway.state.value != "stopped":
            gateway.request_drain("stop", force=True)


SESSION = {"agent": "main", "origin": {"channel": "console", "to": "ops"}, "prompt": "hello"}


# --- auth -------------------------------------------------------------------------------------


async def test_healthz_needs_no_token_and_reports_generation(running: Running, autojump_clock: trio.abc.Clock) -> None:
    reply = await running.call("GET", "/healthz", headers={"authorization": ""})
    assert (reply.status, reply.json) == (200, {"status": "ok", "generation": 1, "version": trio_gateway.__version__})


async def test_cluster_route_says_cluster_mode_is_off(running: Running, autojump_clock: trio.abc.Clock) -> None:
    reply = await running.call("GET", "/v1/cluster")
    assert reply.status == 404
    assert "cluster mode is off" in reply.json["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/status"),
        ("GET", "/v1/cluster"),
        ("GET", "/metrics"),
        ("POST", "/v1/gateway/restart"),
        ("POST", "/v1/gateway/stop"),
        ("POST", "/v1/sessions"),
        ("GET", "/v1/sessions"),
        ("GET", "/v1/deliveries"),
        ("POST", "/internal/test/stall-model-call"),
        ("GET", "/no/such/route"),
    ],
)
@pytest.mark.parametrize("header", ["", "Bearer wrong-token", "Basic " + TOKEN, "Bearer"])
async def test_every_route_but_healthz_refuses_a_missing_or_wrong_token(
    running: Running, autojump_clock: trio.abc.Clock, method: str, path: str, header: str
) -> None:
    reply = await running.call(method, path, SESSION, headers={"authorization": header})
    assert reply.status == 401
    assert reply.json["error"] == "UnauthorizedError"
    assert TOKEN not in reply.body.decode()
    # ... and changed nothing.
    assert running.gateway.sessions == {}
    assert running.gateway.draining is None
    assert running.gateway.state.value == "running"


# --- sessions ---------------------------------------------------------------------------------


async def test_session_start_is_acknowledged_after_the_turn_is_on_disk(
    running: Running, autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    reply = await running.call("POST", "/v1/sessions", SESSION)
    assert reply.status == 202
    session_id = reply.json["sessionId"]
    assert session_id in running.gateway.sessions
    assert any(session_id in p.name for p in (tmp_path / "sessions").iterdir())
    listed = await running.call("GET", "/v1/sessions")
    assert [s["id"] for s in listed.json["sessions"]] == [session_id]


@pytest.mark.parametrize(
    ("body", "status", "error", "names"),
    [
        (b"{not json", 400, "BadRequestError", "body"),
        (b"[1, 2]", 400, "BadRequestError", "body"),
        ({**SESSION, "prompt": 5}, 400, "BadRequestError", "prompt"),
        ({**SESSION, "agent": "nobody"}, 400, "BadRequestError", "agent"),
        ({**SESSION, "origin": "console"}, 400, "BadRequestError", "origin"),
        ({**SESSION, "origin": {"channel": "fax", "to": "1"}}, 400, "BadRequestError", "origin.channel"),
        ({**SESSION, "origin": {"channel": "console"}}, 400, "BadRequestError", "origin.to"),
        (
            {**SESSION, "origin": {"channel": "feishu", "to": "o9cq80abc@im.wechat"}},
            400,
            "DeliveryValidationError",
            "channel=feishu",
        ),
    ],
)
async def test_bad_session_input_is_400_naming_the_field(
    running: Running, autojump_clock: trio.abc.Clock, body: object, status: int, error: str, names: str
) -> None:
    reply = await running.call("POST", "/v1/sessions", body)
    assert (reply.status, reply.json["error"]) == (status, error)
    assert names in reply.json["message"]
    assert running.gateway.sessions == {}


async def test_body_over_max_body_bytes_is_413(running: Running, autojump_clock: trio.abc.Clock) -> None:
    limit = running.gateway.config.gateway.max_body_bytes
    reply = await running.call("POST", "/v1/sessions", {**SESSION, "prompt": "x" * limit})
    assert reply.status == 413
    assert reply.json["error"] == "PayloadTooLargeError"
    assert running.gateway.sessions == {}


async def test_abort_a_stalled_session_and_404_for_an_unknown_one(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    stalled = await running.call("POST", "/internal/test/stall-model-call", {"durationMs": 600_000})
    session_id = stalled.json["sessionId"]
    await trio.sleep(1)
    assert [w["kind"] for w in (await running.call("GET", "/v1/status")).json["work"]] == ["model_call"]
    reply = await running.call("POST", f"/v1/sessions/{session_id}/abort")
    assert reply.json == {"sessionId": session_id, "aborted": True}
    await trio.sleep(1)
    assert (await running.call("GET", "/v1/status")).json["work"] == []
    missing = await running.call("POST", "/v1/sessions/s-nope/abort")
    assert (missing.status, missing.json["error"]) == (404, "NotFoundError")


async def test_test_endpoints_are_404_unless_enabled(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, quick_config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        reply = await Driver(GatewayApp(gateway, TOKEN, {}))("POST", "/internal/test/stall-model-call", {})
        assert (reply.status, reply.json["error"]) == (404, "NotFoundError")
        assert gateway.sessions == {}
        gateway.request_drain("stop", force=True)


# --- restart and stop -------------------------------------------------------------------------


async def test_restart_is_202_at_once_joins_a_running_drain_and_503s_intake(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    await running.call("POST", "/internal/test/stall-model-call", {"durationMs": 600_000})
    first = await running.call("POST", "/v1/gateway/restart", {"timeoutSeconds": 10})
    assert first.status == 202
    assert first.json["drain"]["kind"] == "restart"
    assert first.json["drain"]["fromGeneration"] == 1
    assert first.json["drain"]["remainingSeconds"] == pytest.approx(10)
    await trio.sleep(2)
    health = await running.call("GET", "/healthz")
    assert health.json == {"status": "draining", "generation": 1, "version": trio_gateway.__version__}
    refused = await running.call("POST", "/v1/sessions", SESSION)
    assert (refused.status, refused.json["error"]) == (503, "GatewayDrainingError")
    # A second request joins the drain and may only tighten it.
    joined = await running.call("POST", "/v1/gateway/restart", {"timeoutSeconds": 3})
    assert joined.json["drain"]["elapsedSeconds"] == pytest.approx(2, abs=0.05)
    assert joined.json["drain"]["remainingSeconds"] == pytest.approx(3, abs=0.05)
    start = trio.current_time()
    await running.gateway.state.wait_value(lambda s: s == "running" and running.gateway.generation_number == 2)
    assert trio.current_time() - start == pytest.approx(3, abs=0.05)
    assert len(running.gateway.drains) == 1
    drains = await running.call("GET", "/v1/gateway/drains")
    assert drains.json["drains"][0]["timedOut"] is True
    assert drains.json["drains"][0]["abortedWork"][0].startswith("model_call")


@pytest.mark.parametrize(("body", "field"), [({"force": "yes"}, "force"), ({"timeoutSeconds": -1}, "timeoutSeconds")])
async def test_bad_restart_input_is_400_and_starts_no_drain(
    running: Running, autojump_clock: trio.abc.Clock, body: object, field: str
) -> None:
    reply = await running.call("POST", "/v1/gateway/restart", body)
    assert (reply.status, reply.json["error"]) == (400, "BadRequestError")
    assert field in reply.json["message"]
    assert running.gateway.draining is None


async def test_restart_with_wait_answers_when_the_new_generation_accepts_work(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    reply = await running.call("POST", "/v1/gateway/restart", {"wait": True, "force": True})
    assert reply.status == 200
    assert reply.json["generation"] == 2
    assert reply.json["drain"]["forced"] is True


async def test_a_waiting_handler_is_cancelled_when_its_client_disconnects(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    await running.call("POST", "/internal/test/stall-model-call", {"durationMs": 600_000})
    call = running.call
    replies: list[Reply] = []
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _append(replies, call("POST", "/v1/gateway/restart", {"wait": True})))
        await trio.sleep(1)
        call.disconnect.set()
    # The handler returned at the disconnect, not after the 10 s drain it was waiting for;
    # the drain itself goes on (the client leaving does not cancel the restart).
    assert trio.current_time() - start == pytest.approx(1, abs=0.05)
    assert replies[0].json["error"] == "_ClientGone"
    assert running.gateway.state.value == "draining"


async def _append(out: list[Reply], reply: Any) -> None:
    out.append(await reply)


async def test_stop_is_202_then_the_gateway_stops(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        reply = await Driver(GatewayApp(gateway, TOKEN, {}))("POST", "/v1/gateway/stop", {})
        assert reply.status == 202
        assert reply.json["drain"]["kind"] == "stop"
    assert gateway.state.value == "stopped"


# --- deliveries, metrics ----------------------------------------------------------------------


async def test_deliveries_create_validates_then_lists(running: Running, autojump_clock: trio.abc.Clock) -> None:
    bad = {"channel": "feishu", "to": "o9cq80abc@im.wechat", "accountId": "app1", "agentId": "main", "text": "x"}
    refused = await running.call("POST", "/v1/deliveries", bad)
    assert (refused.status, refused.json["error"]) == (400, "DeliveryValidationError")
    assert (await running.call("GET", "/v1/deliveries")).json == {
        "pending": [],
        "failed": [],
        "total": {"pending": 0, "failed": 0},
        "next": {"pending": None, "failed": None},
    }
    good = {**bad, "to": "ou_abc123"}
    created = await running.call("POST", "/v1/deliveries", good)
    assert created.status == 202
    listed = (await running.call("GET", "/v1/deliveries")).json
    assert [(e["id"], e["channel"], e["to"], e["kind"]) for e in listed["pending"]] == [
        (created.json["id"], "feishu", "ou_abc123", "manual")
    ]


async def test_metrics_after_a_timed_out_drain(running: Running, autojump_clock: trio.abc.Clock) -> None:
    await running.call("POST", "/internal/test/stall-model-call", {"durationMs": 600_000})
    await running.call("POST", "/v1/gateway/restart", {"timeoutSeconds": 2})
    await running.gateway.state.wait_value(lambda s: s == "running" and running.gateway.generation_number == 2)
    reply = await running.call("GET", "/metrics")
    text = reply.body.decode()
    assert reply.status == 200
    lines = set(text.splitlines())
    # prometheus-client writes every value as a float.
    assert 'trio_gateway_drains_total{kind="restart",outcome="timed_out"} 1.0' in lines
    assert 'trio_gateway_drain_duration_seconds_bucket{le="1"} 0.0' in lines
    assert 'trio_gateway_drain_duration_seconds_bucket{le="2.5"} 1.0' in lines
    assert "trio_gateway_drain_duration_seconds_count 1.0" in lines
    assert "trio_gateway_generation 2.0" in lines
    assert 'trio_gateway_aborts_total{kind="model_call"} 1.0' in lines
    assert "trio_gateway_delivery_queue_pending 0.0" in lines
    assert "# TYPE trio_gateway_drains_total counter" in lines
    assert "# TYPE trio_gateway_drain_duration_seconds histogram" in lines
    # Process metrics come from prometheus-client's collectors, the version from ours.
    assert any(ln.startswith("process_resident_memory_bytes ") for ln in lines)
    assert any(ln.startswith('trio_gateway_build_info{version="') and ln.endswith(" 1.0") for ln in lines)
    families = ("# HELP", "# TYPE", "trio_gateway_", "process_", "python_")
    assert all(ln.startswith(families) for ln in text.splitlines())


# --- inbound channel events -------------------------------------------------------------------


def slack_headers(body: bytes, ts: float = NOW, secret: str = SLACK_SECRET) -> dict[str, str]:
    stamp = str(int(ts))
    digest = hmac.new(secret.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
    return {"authorization": "", "x-slack-request-timestamp": stamp, "x-slack-signature": f"v0={digest}"}


SLACK_MESSAGE = json.dumps(
    {
        "type": "event_callback",
        "event": {"type": "message", "channel": "C0123456789", "user": "U1", "text": "hi", "ts": "1700000000.000100"},
    }
).encode()


async def test_signed_slack_message_starts_a_turn_for_its_sender(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    reply = await running.call("POST", "/channels/slack/T1/events", SLACK_MESSAGE, slack_headers(SLACK_MESSAGE))
    assert reply.status == 200
    session = running.gateway.sessions[reply.json["sessionId"]]
    origin = session.record.origin
    assert origin is not None
    assert (origin.channel, origin.to, origin.account_id) == ("slack", "C0123456789", "T1")


@pytest.mark.parametrize(
    "headers",
    [
        slack_headers(SLACK_MESSAGE, secret="wrong"),
        slack_headers(SLACK_MESSAGE, ts=NOW - 301),  # a replay from outside the 5-minute window
        slack_headers(b"another body"),
        {"authorization": ""},
    ],
)
async def test_unverifiable_slack_events_are_401(
    running: Running, autojump_clock: trio.abc.Clock, headers: dict[str, str]
) -> None:
    reply = await running.call("POST", "/channels/slack/T1/events", SLACK_MESSAGE, headers)
    assert (reply.status, reply.json["error"]) == (401, "UnauthorizedError")
    assert SLACK_SECRET not in reply.body.decode()
    assert running.gateway.sessions == {}


async def test_slack_url_verification_answers_the_challenge(running: Running, autojump_clock: trio.abc.Clock) -> None:
    body = json.dumps({"type": "url_verification", "challenge": "c-123"}).encode()
    reply = await running.call("POST", "/channels/slack/T1/events", body, slack_headers(body))
    assert reply.json == {"challenge": "c-123"}


async def test_telegram_secret_token(running: Running, autojump_clock: trio.abc.Clock) -> None:
    person = {"id": 42, "is_bot": False}
    update = {"update_id": 1, "message": {"from": person, "chat": {"id": -100123}, "text": "hello"}}
    bad = await running.call("POST", "/channels/telegram/bot1/events", update, {"authorization": ""})
    assert bad.status == 401
    headers = {"authorization": "", "x-telegram-bot-api-secret-token": "tg-secret"}
    good = await running.call("POST", "/channels/telegram/bot1/events", update, headers)
    assert good.status == 200
    origin = running.gateway.sessions[good.json["sessionId"]].record.origin
    assert origin is not None
    assert origin.to == "-100123"


async def test_a_webhook_stop_stops_the_running_turn_at_once(running: Running, autojump_clock: trio.abc.Clock) -> None:
    """SPEC 15 by webhook: `/stop` is answered within the request (the 200 comes once
    `Stopped.` is durable), while the conversation's turn runs."""
    headers = {"authorization": "", "x-telegram-bot-api-secret-token": "tg-secret"}
    stall = {"update_id": 7, "message": {"chat": {"id": 555}, "text": "/stall"}}
    turn = await running.call("POST", "/channels/telegram/bot1/events", stall, headers)
    session = running.gateway.sessions[turn.json["sessionId"]]
    await trio.sleep(1)
    stop = {"update_id": 8, "message": {"chat": {"id": 555}, "text": "/stop"}}
    reply = await running.call("POST", "/channels/telegram/bot1/events", stop, headers)
    assert (reply.status, reply.json) == (200, {"sessionId": session.id, "turnId": "cmd-telegram-bot1-8"})
    assert [t.status for t in session.record.stopped] == ["stopped"]
    assert session.record.turns == []


async def test_feishu_verification_token_and_challenge(running: Running, autojump_clock: trio.abc.Clock) -> None:
    challenge = {"type": "url_verification", "challenge": "fc", "token": "fs-verify"}
    assert (await running.call("POST", "/channels/feishu/app1/events", challenge)).json == {"challenge": "fc"}
    event: dict[str, Any] = {
        "schema": "2.0",
        "header": {"event_type": "im.message.receive_v1", "token": "fs-verify"},
        "event": {
            "sender": {"sender_id": {"open_id": "ou_sender1"}},
            "message": {"content": json.dumps({"text": "hi"})},
        },
    }
    good = await running.call("POST", "/channels/feishu/app1/events", event)
    assert good.status == 200
    forged = {**event, "header": {**event["header"], "token": "guess"}}
    assert (await running.call("POST", "/channels/feishu/app1/events", forged)).status == 401
    assert len(running.gateway.sessions) == 1


async def test_channels_without_a_verifiable_scheme_or_account_are_refused(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    body = {"content": "hi"}
    assert (await running.call("POST", "/channels/discord/d1/events", body)).status == 401
    assert (await running.call("POST", "/channels/slack/nope/events", body)).status == 404
    assert running.gateway.sessions == {}


async def test_replayed_webhook_events_start_one_turn(running: Running, autojump_clock: trio.abc.Clock) -> None:
    """Issue 9 item 9: a signed retry (Slack `event_id`, Telegram `update_id`, Feishu
    `header.event_id`) is a no-op, recorded with the turn in the session file."""
    slack = json.dumps({**json.loads(SLACK_MESSAGE), "event_id": "Ev01"}).encode()
    telegram = {"update_id": 77, "message": {"from": {"id": 5, "is_bot": False}, "chat": {"id": 5}, "text": "hello"}}
    tg_headers = {"authorization": "", "x-telegram-bot-api-secret-token": "tg-secret"}
    feishu = {
        "schema": "2.0",
        "header": {"event_type": "im.message.receive_v1", "token": "fs-verify", "event_id": "fe-1"},
        "event": {"sender": {"sender_id": {"open_id": "ou_x"}}, "message": {"content": json.dumps({"text": "hi"})}},
    }
    for _ in range(3):
        replies = [
            await running.call("POST", "/channels/slack/T1/events", slack, slack_headers(slack)),
            await running.call("POST", "/channels/telegram/bot1/events", telegram, tg_headers),
            await running.call("POST", "/channels/feishu/app1/events", feishu),
        ]
        assert all(r.status == 200 for r in replies)
    assert [r.json for r in replies] == [{"duplicate": True}] * 3
    turns = [t for s in running.gateway.sessions.values() for t in s.record.turns]
    assert len(running.gateway.sessions) == 3
    assert len(turns) <= 3  # each answered once (some may have finished already)
    histories = [s.record.inbound_ids for s in running.gateway.sessions.values()]
    # Slack's is the message's channel and `ts` (issue 20): its `message` and `app_mention`
    # events carry different event ids for one message, and must make one turn.
    assert sorted(histories) == [["77"], ["C0123456789:1700000000.000100"], ["fe-1"]]


async def test_encrypted_feishu_events_are_decrypted_and_checked(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    from trio_gateway.channels.feishu import encrypt_event, event_signature

    event = {
        "schema": "2.0",
        "header": {"event_type": "im.message.receive_v1", "token": "fs-verify", "event_id": "enc-1"},
        "event": {"sender": {"sender_id": {"open_id": "ou_enc"}}, "message": {"content": json.dumps({"text": "s"})}},
    }
    body = json.dumps({"encrypt": encrypt_event(event, "fs-encrypt-key", b"0123456789abcdef")}).encode()
    signed = {"x-lark-request-timestamp": "1700000000", "x-lark-request-nonce": "n1",
              "x-lark-signature": event_signature("1700000000", "n1", "fs-encrypt-key", body)}  # fmt: skip
    good = await running.call("POST", "/channels/feishu/app1/events", body, signed)
    assert good.status == 200
    origin = running.gateway.sessions[good.json["sessionId"]].record.origin
    assert origin is not None
    assert origin.to == "ou_enc"
    challenge = {"encrypt": encrypt_event({"type": "url_verification", "challenge": "ec", "token": "fs-verify"},
                                          "fs-encrypt-key", b"fedcba9876543210")}  # fmt: skip
    assert (await running.call("POST", "/channels/feishu/app1/events", challenge)).json == {"challenge": "ec"}
    wrong_key = json.dumps({"encrypt": encrypt_event(event, "another key", b"0123456789abcdef")}).encode()
    forged = {**signed, "x-lark-signature": "0" * 64}
    unsigned = {k: v for k, v in signed.items() if k != "x-lark-signature"}  # lark-oapi refuses it too
    bads = ((wrong_key, {}), (body, forged), (body, unsigned), (b'{"encrypt": "not base64!"}', {}))
    for bad_body, headers in bads:
        refused = await running.call("POST", "/channels/feishu/app1/events", bad_body, headers)
        assert (refused.status, refused.json["error"]) == (401, "UnauthorizedError")
        assert "fs-encrypt-key" not in refused.body.decode()
    assert len(running.gateway.sessions) == 1


# --- through real hypercorn -------------------------------------------------------------------


async def test_hypercorn_serves_the_app_in_the_gateway_root_nursery(tmp_path: Path) -> None:
    import httpx2

    server = HttpServer("127.0.0.1", 0, TOKEN, {})
    gateway, sink = build_gateway(tmp_path, config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert server.bound_port
        async with httpx2.AsyncClient(base_url=server.urls[0], trust_env=False) as client:
            health = await client.get("/healthz")
            unauthorized = await client.get("/v1/status")
            restart = await client.post("/v1/gateway/restart", json={"wait": True}, headers=AUTH)
            after = await client.get("/healthz")
        gateway.request_drain("stop")
    assert health.json() == {"status": "ok", "generation": 1, "version": trio_gateway.__version__}
    assert unauthorized.status_code == 401
    assert (restart.status_code, restart.json()["generation"]) == (200, 2)
    assert after.json() == {"status": "ok", "generation": 2, "version": trio_gateway.__version__}
    assert any(e.tag == "HTTP" and server.urls[0] in e.message for e in sink.events)
