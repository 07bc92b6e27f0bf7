"""Hostile input at the edges (issue 9): absurd numbers, lone surrogates, bad config files on a
reload, unauthenticated clients holding memory or connections, forged log lines, weak token
files. Each case is a clear 4xx or ConfigError; the gateway stays up and serves the next request."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from test_http_api import ENV, NOW, SESSION, SLACK_MESSAGE, TOKEN, Driver, Reply, config, slack_headers

from trio_gateway import log as log_mod
from trio_gateway.channels import registry
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError, InsufficientStorageError
from trio_gateway.http import auth
from trio_gateway.http.app import GatewayApp
from trio_gateway.http.asgi import Message
from trio_gateway.log import MemorySink
from trio_gateway.policy import config as cfg
from trio_gateway.policy import config_keys
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import build_gateway
from trio_gateway.storage.config_file import load as load_config_file
from trio_gateway.storage.config_file import read_raw
from trio_gateway.storage.sessions import SessionRecord, SessionStore


@attrs.define
class Running:
    gateway: Gateway
    sink: MemorySink
    call: Driver
    app: GatewayApp


@pytest.fixture
async def running(tmp_path: Path, autojump_clock: trio.abc.Clock) -> AsyncIterator[Running]:
    gateway, sink = build_gateway(tmp_path, config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        app = GatewayApp(gateway, TOKEN, ENV, wall_time=lambda: NOW)
        yield Running(gateway, sink, Driver(app), app)
        if gateway.state.value != "stopped":
            gateway.request_drain("stop", force=True)


async def still_serving(running: Running) -> None:
    reply = await running.call("POST", "/v1/sessions", SESSION)
    assert reply.status == 202, reply.json
    assert running.gateway.state.value == "running"


# --- 1. absurd numbers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/gateway/restart", b'{"timeoutSeconds": 1e306}', "timeoutSeconds"),
        ("/v1/gateway/restart", b'{"timeoutSeconds": 1e400}', "timeoutSeconds"),  # parses as inf
        ("/v1/gateway/restart", b'{"timeoutSeconds": NaN}', "NaN"),
        ("/v1/gateway/restart", b'{"timeoutSeconds": 1' + b"0" * 400 + b"}", "timeoutSeconds"),
        ("/v1/gateway/stop", b'{"timeoutSeconds": 1e306}', "timeoutSeconds"),
        ("/internal/test/stall-model-call", b'{"durationMs": 1e306}', "durationMs"),
        ("/v1/sessions", b'{"agent": "main", "prompt": "x", "n": 1' + b"0" * 5000 + b"}", "body"),
    ],
)
async def test_an_absurd_number_is_a_400_naming_the_field_and_starts_nothing(
    running: Running, autojump_clock: trio.abc.Clock, path: str, body: bytes, field: str
) -> None:
    reply = await running.call("POST", path, body)
    assert (reply.status, reply.json["error"]) == (400, "BadRequestError")
    assert field in reply.json["message"]
    assert running.gateway.draining is None
    assert running.gateway.sessions == {}
    await trio.sleep(1)
    await still_serving(running)


async def test_the_largest_documented_timeout_drains_and_logs(running: Running, autojump_clock: trio.abc.Clock) -> None:
    reply = await running.call("POST", "/v1/gateway/restart", {"timeoutSeconds": 86_400, "wait": True})
    assert (reply.status, reply.json["generation"]) == (200, 2)
    assert any("timeout=86400000ms" in e.message for e in running.sink.tagged("DRAINING"))


def test_log_durations_never_raise() -> None:
    assert log_mod.ms(1e306) == "infms"
    assert log_mod.ms(float("nan")) == "nanms"
    assert log_mod.ms(2.0) == "2000ms"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("gateway.drain.timeoutSeconds", 1e308),
        ("gateway.drain.timeoutSeconds", 10**400),
        ("gateway.stalledTaskDetection.checkIntervalSeconds", 1e-300),
        ("delivery.rescanIntervalSeconds", 1e-300),
        ("delivery.concurrency", 10**9),
        ("gateway.maxBodyBytes", 0),
        ("gateway.bodyReadTimeoutSeconds", 0),
        ("gateway.maxConnections", 0),
        ("models.default.requestTimeoutSeconds", 1e300),
        ("agents.main.maxToolRounds", 10**6),
    ],
)
def test_an_out_of_range_config_value_is_a_config_error_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        config_keys.set_key({}, key, value)
    assert info.value.path == key
    assert "must be between" in info.value.what or "finite" in info.value.what


def test_config_set_refuses_1e308_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    assert main(["--home", str(home), "config", "set", "gateway.drain.timeoutSeconds", "1e308"]) == 2
    assert "gateway.drain.timeoutSeconds: must be between 0.001 and 86400" in capsys.readouterr().err
    assert not (home / "gateway.json").exists()


def _cron_and_models() -> dict[str, Any]:
    return {
        "models": {"m": {"baseUrl": "http://127.0.0.1:9", "model": "x"}},
        "agents": {"main": {}},
        "cron": [{"id": "c", "agent": "main", "everySeconds": 60, "prompt": "p"}],
    }


def test_every_numeric_config_key_has_a_documented_range() -> None:
    found = {pattern for pattern, _, _ in cfg.numbers(cfg.parse(_cron_and_models()))}
    missing = found - set(cfg.RANGES)
    assert not missing, f"give these keys a range in config.RANGES (and the README): {sorted(missing)}"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    undocumented = [key for key in cfg.RANGES if f"`{key}`" not in readme]
    assert not undocumented, f"README's range table lacks {undocumented}"


# --- 2. lone surrogates -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**SESSION, "prompt": "x\ud800"}, "prompt"),
        ({**SESSION, "origin": {"channel": "console", "to": "ops\udfff"}}, "origin.to"),
        ({**SESSION, "agent": "\udc80"}, "agent"),
        ({**SESSION, "origin": {"channel": "console", "to": "ops", "\ud800": 1}}, "origin"),
    ],
)
async def test_a_lone_surrogate_is_a_400_and_leaves_no_trace(
    running: Running, autojump_clock: trio.abc.Clock, body: dict[str, Any], field: str
) -> None:
    reply = await running.call("POST", "/v1/sessions", json.dumps(body).encode())  # `\ud800` on the wire
    assert (reply.status, reply.json["error"]) == (400, "BadRequestError")
    assert field in reply.json["message"]
    assert "lone surrogate" in reply.json["message"]
    assert running.gateway.sessions == {}
    assert (await running.call("GET", "/v1/status")).status == 200
    await still_serving(running)
    reply = await running.call("POST", "/v1/gateway/restart", {"wait": True})
    assert (reply.status, running.gateway.generation_number) == (200, 2)


async def test_a_turn_whose_save_fails_leaves_no_trace_and_the_origin_keeps_working(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Past the edge (a caller inside the process): the turn is not kept in memory when its save
    fails, so later turns to that origin and the next restart are unaffected."""
    gateway, sink = build_gateway(tmp_path, config())
    origin = Origin("console", "ops")
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        with pytest.raises(UnicodeEncodeError):
            await gateway.submit(agent_id="main", origin=origin, prompt="x\ud800")
        assert gateway.sessions == {}
        session_id, _ = await gateway.submit(agent_id="main", origin=origin, prompt="hello")
        with pytest.raises(UnicodeEncodeError):
            await gateway.submit(agent_id="main", origin=origin, prompt="y\udfff")
        assert all(
            "\ud800" not in t.prompt and "\udfff" not in t.prompt for t in gateway.sessions[session_id].record.turns
        )
        await gateway.submit(agent_id="main", origin=origin, prompt="again")
        await gateway.request_drain("restart", timeout=5).done.wait()
        assert gateway.generation_number == 2
        gateway.request_drain("stop", force=True)
    assert gateway.state.value == "stopped"
    assert not [e for e in sink.events if e.level == "ERROR"]


async def test_a_failed_save_of_a_new_session_forgets_the_session(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    gateway, _ = build_gateway(tmp_path, config())

    @attrs.define
    class FullDisk(SessionStore):
        fail: int = 1

        async def save(self, record: SessionRecord) -> None:
            if self.fail:
                self.fail -= 1
                raise OSError(28, "No space left on device")
            await super().save(record)

    gateway.table.store = FullDisk(gateway.store.root, gateway.store.runner, gateway.store.log)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        with pytest.raises(InsufficientStorageError, match="No space"):  # 507 (SPEC 5)
            await gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt="hello")
        assert gateway.sessions == {}
        session_id, _ = await gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt="hello")
        assert list(gateway.sessions) == [session_id]
        gateway.request_drain("stop", force=True)


def test_the_cli_refuses_text_that_is_not_unicode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # argv bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape).
    args = ["session", "start", "--agent", "main", "--channel", "console", "--to", "ops", "--prompt", "x\udcff"]
    assert main(["--home", str(tmp_path / "h"), *args]) == 2
    assert "UsageError: prompt: not valid Unicode" in capsys.readouterr().err
    assert main(["--home", str(tmp_path / "h"), "config", "set", "agents.main.systemPrompt", "\udcff"]) == 2
    assert not (tmp_path / "h" / "gateway.json").exists()


# --- 3. a bad gateway.json on reload ------------------------------------------------------------


def _bad_files() -> list[tuple[str, Callable[[Path], None]]]:
    return [
        ("invalid UTF-8", lambda p: p.write_bytes(b'{"gateway": {"bind": "\xff"}}')),
        ("100k-deep nesting", lambda p: p.write_text("[" * 100_000 + "]" * 100_000)),
        ("a directory", lambda p: p.mkdir()),
        ("NaN", lambda p: p.write_text('{"gateway": {"drain": {"timeoutSeconds": NaN}}}')),
        ("a 5000-digit number", lambda p: p.write_text('{"gateway": {"port": 1' + "0" * 5000 + "}}")),
        ("a lone surrogate", lambda p: p.write_text('{"agents": {"main": {"systemPrompt": "\\ud800"}}}')),
    ]


@pytest.mark.parametrize(("what", "make"), _bad_files(), ids=[w for w, _ in _bad_files()])
def test_every_bad_config_file_is_a_config_error_naming_the_file(
    tmp_path: Path, what: str, make: Callable[[Path], None]
) -> None:
    path = tmp_path / "gateway.json"
    make(path)
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value) or "systemPrompt" in str(info.value)


@pytest.mark.parametrize(("what", "make"), _bad_files(), ids=[w for w, _ in _bad_files()])
async def test_a_bad_reload_keeps_the_running_config_and_reports_it(
    tmp_path: Path, autojump_clock: trio.abc.Clock, what: str, make: Callable[[Path], None]
) -> None:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"gateway": {"drain": {"timeoutSeconds": 7}}}))
    good = load_config_file(path)
    gateway, sink = build_gateway(tmp_path / "home", good, load_config=lambda: load_config_file(path))
    app = GatewayApp(gateway, TOKEN, {})
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        path.unlink()
        make(path)
        reply = await Driver(app)("POST", "/v1/gateway/restart", {"wait": True})
        assert (reply.status, reply.json["generation"]) == (200, 2)
        assert reply.json["drain"]["configRejected"]
        assert gateway.config.gateway.drain.timeout_seconds == 7
        assert [e.message for e in sink.tagged("RESTART") if e.level == "ERROR"] == [
            "Config reload failed; keeping the current config"
        ]
        drains = await Driver(app)("GET", "/v1/gateway/drains")
        assert drains.json["drains"][-1]["configRejected"] == reply.json["drain"]["configRejected"]
        gateway.request_drain("stop", force=True)
    assert gateway.state.value == "stopped"


def test_read_raw_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "gateway.json").mkdir()
    with pytest.raises(ConfigError, match="cannot read"):
        read_raw(tmp_path / "gateway.json")


# --- 4. unauthenticated clients -----------------------------------------------------------------


@attrs.define
class SlowClient:
    """An ASGI client whose body never arrives: records whether the app asked for it."""

    app: GatewayApp
    asked: int = 0

    async def __call__(self, path: str, headers: dict[str, str]) -> Reply:
        sent: list[Message] = []

        async def receive() -> Message:
            self.asked += 1
            await trio.sleep_forever()
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            sent.append(message)

        scope = {
            "type": "http",
            "method": "POST",
            "path": path,
            "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
        }
        await self.app(scope, receive, send)
        start, body = sent
        assert (b"connection", b"close") in start["headers"]
        return Reply(start["status"], body["body"])


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/channels/slack/nope/events", {"content-length": "1000"}, 404),
        ("/channels/fax/a/events", {"content-length": "1000"}, 404),
        ("/channels/discord/d1/events", {"content-length": "1000"}, 401),
        ("/channels/slack/T1/events", {"content-length": "1000"}, 401),  # no timestamp or signature
        ("/channels/slack/T1/events", {"x-slack-request-timestamp": "nan", "x-slack-signature": "v0=1"}, 401),
        (
            "/channels/slack/T1/events",
            {"x-slack-request-timestamp": str(int(NOW) - 301), "x-slack-signature": "v0=1"},
            401,
        ),
        ("/channels/telegram/bot1/events", {"x-telegram-bot-api-secret-token": "guess"}, 401),
        ("/channels/slack/T1/events", {"content-length": str(10**9)}, 413),
    ],
)
async def test_unauthenticated_events_are_refused_before_the_body_is_read(
    running: Running, autojump_clock: trio.abc.Clock, path: str, headers: dict[str, str], status: int
) -> None:
    client = SlowClient(running.app)
    with trio.fail_after(1):
        reply = await client(path, headers)
    assert reply.status == status
    assert client.asked == 0
    assert running.gateway.sessions == {}


async def test_a_body_that_never_arrives_is_a_408_after_body_read_timeout(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    stamp = str(int(NOW))
    headers = {"x-slack-request-timestamp": stamp, "x-slack-signature": "v0=" + "0" * 64}
    start = trio.current_time()
    reply = await SlowClient(running.app)("/channels/slack/T1/events", headers)
    assert (reply.status, json.loads(reply.body)["error"]) == (408, "RequestTimeoutError")
    assert trio.current_time() - start == pytest.approx(running.gateway.config.gateway.body_read_timeout_seconds)
    await still_serving(running)


async def test_a_slack_timestamp_of_nan_is_refused_even_when_signed(
    running: Running, autojump_clock: trio.abc.Clock
) -> None:
    digest = hmac.new(b"slack-signing-secret", b"v0:nan:" + SLACK_MESSAGE, hashlib.sha256).hexdigest()
    headers = {"authorization": "", "x-slack-request-timestamp": "nan", "x-slack-signature": f"v0={digest}"}
    reply = await running.call("POST", "/channels/slack/T1/events", SLACK_MESSAGE, headers)
    assert (reply.status, reply.json["error"]) == (401, "UnauthorizedError")
    assert running.gateway.sessions == {}


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"type": "event_callback", "event": {"type": "message", "channel": "C0123456789", "text": "\\ud800"}}',
    ],
)
async def test_a_signed_but_hostile_webhook_body_is_a_400(
    running: Running, autojump_clock: trio.abc.Clock, body: bytes
) -> None:
    reply = await running.call("POST", "/channels/slack/T1/events", body, slack_headers(body))
    assert (reply.status, reply.json["error"]) == (400, "BadRequestError")
    await still_serving(running)


# --- 5. lower: deep JSON, forged log lines, the token file -------------------------------------


async def test_100k_deep_json_is_a_400_on_every_body_route(running: Running, autojump_clock: trio.abc.Clock) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/sessions", "/v1/deliveries", "/v1/gateway/restart", "/internal/test/stall-model-call"):
        reply = await running.call("POST", path, deep)
        assert (reply.status, reply.json["error"]) == (400, "BadRequestError"), path
        assert "nested too deeply" in reply.json["message"]
    assert running.gateway.draining is None
    await still_serving(running)


@pytest.mark.parametrize("to", ["ops\nINFO [RESTART] generation=9 accepting work", "ops\r", "a\x1b[2Jb", "x\u2028y"])
async def test_a_console_address_with_a_control_character_is_refused(
    running: Running, autojump_clock: trio.abc.Clock, to: str
) -> None:
    session = await running.call("POST", "/v1/sessions", {**SESSION, "origin": {"channel": "console", "to": to}})
    delivery = await running.call("POST", "/v1/deliveries", {"channel": "console", "to": to, "text": "x"})
    for reply in (session, delivery):
        assert (reply.status, reply.json["error"]) == (400, "DeliveryValidationError")
    assert running.gateway.sessions == {}
    assert all("\n" not in line for line in running.sink.lines())


def test_text_log_lines_escape_control_characters() -> None:
    sink = MemorySink()
    log = log_mod.EventLog([sink])
    log.warn("VALIDATION", "Channel-address mismatch: address=ops\nINFO [RESTART] forged", to="a\nb\x1b", key="k\u2028")
    [line] = sink.lines()
    assert "\n" not in line
    assert "\x1b" not in line
    assert "\u2028" not in line
    assert "address=ops\\nINFO [RESTART] forged" in line
    assert 'to="a\\nb\\u001b"' in line


def _token_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "gateway.token"
    path.write_text(text)
    path.chmod(mode)
    return path


GOOD_TOKEN = "t" * 43


def test_a_good_token_file_is_read(tmp_path: Path) -> None:
    assert auth.read_token(_token_file(tmp_path, GOOD_TOKEN + "\n")) == GOOD_TOKEN


@pytest.mark.parametrize(
    ("case", "fix"),
    [
        ("world-readable", "chmod 600"),
        ("group-readable", "chmod 600"),
        ("symlink", "symbolic link"),
        ("short", "delete it"),
    ],
)
def test_a_weak_token_file_is_refused_naming_the_fix(tmp_path: Path, case: str, fix: str) -> None:
    if case == "world-readable":
        path = _token_file(tmp_path, GOOD_TOKEN, 0o644)
    elif case == "group-readable":
        path = _token_file(tmp_path, GOOD_TOKEN, 0o640)
    elif case == "short":
        path = _token_file(tmp_path, "abc123")
    else:
        path = tmp_path / "link.token"
        os.symlink(_token_file(tmp_path, GOOD_TOKEN), path)
    with pytest.raises(ConfigError) as info:
        auth.token_for_start(path, "127.0.0.1")
    assert fix in str(info.value)
    assert GOOD_TOKEN not in str(info.value)


def test_a_created_token_passes_its_own_checks(tmp_path: Path) -> None:
    token = auth.token_for_start(tmp_path / "gateway.token", "127.0.0.1")
    assert auth.read_token(tmp_path / "gateway.token") == token


# --- through real hypercorn: the connection cap, and closing after an early refusal -----------


async def _read_response(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with trio.fail_after(30):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_connection_n_plus_1_is_closed_and_the_open_ones_are_served(tmp_path: Path) -> None:
    import httpx2

    from trio_gateway.http.server import HttpServer

    limits = {"gateway": {"maxConnections": 3, "bodyReadTimeoutSeconds": 600}}
    server = HttpServer("127.0.0.1", 0, TOKEN, {})
    gateway, sink = build_gateway(tmp_path, cfg.parse(limits), servers=[server.serve])
    body = json.dumps(SESSION).encode()
    head = (
        f"POST /v1/sessions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert server.bound_port is not None
        assert server.cap is not None
        # Three connections, each in the middle of a request (headers sent, body not yet).
        held = [await trio.open_tcp_stream("127.0.0.1", server.bound_port) for _ in range(3)]
        for stream in held:
            await stream.send_all(head)
        with trio.fail_after(30):
            await server.cap.open.wait_value(3)
        extra = await trio.open_tcp_stream("127.0.0.1", server.bound_port)
        try:
            refused = await _read_response(extra)
        except trio.BrokenResourceError:  # a reset is as good as a close
            refused = b""
        assert refused == b""
        assert server.cap.refused == 1
        assert [e.message for e in sink.tagged("HTTP") if e.level == "WARN"] == [
            "Connection cap reached; refusing new connections"
        ]
        # The held connections are still served: finish one request.
        await held[0].send_all(body)
        assert (await _read_response(held[0])).startswith(b"HTTP/1.1 202")
        for stream in (*held, extra):
            await stream.aclose()
        with trio.fail_after(30):
            await server.cap.open.wait_value(0)
        async with httpx2.AsyncClient(base_url=server.urls[0], trust_env=False) as client:
            assert (await client.get("/healthz")).status_code == 200
        gateway.request_drain("stop")


async def test_stop_closes_a_connection_whose_client_reads_nothing(tmp_path: Path) -> None:
    """hypercorn writes a response inside a shield with no deadline: a client that pipelines
    requests and never reads its answers once held `gateway stop` forever."""
    from trio_gateway.http.server import HttpServer

    server = HttpServer("127.0.0.1", 0, TOKEN, {})
    gateway, _ = build_gateway(tmp_path, config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert server.bound_port is not None
        assert server.cap is not None
        # Without the fix, only closing this client at the block's end let the server task finish.
        async with _a_client_that_reads_nothing(server.bound_port):
            gateway.request_drain("stop")
            with trio.move_on_after(30):
                await server.cap.open.wait_value(0)
            assert server.cap.open.value == 0


async def test_a_client_that_reads_nothing_loses_its_connection_after_the_send_stall(tmp_path: Path) -> None:
    """Without a write deadline, such a client held a connection slot for as long as it liked:
    `maxConnections` of them shut everyone out."""
    import httpx2

    from trio_gateway.http.server import HttpServer

    server = HttpServer("127.0.0.1", 0, TOKEN, {}, send_stall_seconds=0.5)
    gateway, _ = build_gateway(tmp_path, config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert server.bound_port is not None
        assert server.cap is not None
        async with _a_client_that_reads_nothing(server.bound_port):
            with trio.move_on_after(30):
                await server.cap.open.wait_value(0)
            assert server.cap.open.value == 0
            assert gateway.state.value == "running"
        async with httpx2.AsyncClient(base_url=server.urls[0], trust_env=False) as http:
            assert (await http.get("/healthz")).status_code == 200
        gateway.request_drain("stop")


_PIPELINED_GET = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


@contextlib.asynccontextmanager
async def _a_client_that_reads_nothing(port: int) -> AsyncIterator[trio.socket.SocketType]:
    """A connection whose client pipelines requests and never reads an answer, its receive buffer
    small so the server's writes block soon; closed at the end of the block."""
    client = trio.socket.socket()
    client.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, 4096)
    try:
        await client.connect(("127.0.0.1", port))
        await _send_until_the_server_stops_reading(client, _PIPELINED_GET)
        yield client
    finally:
        client.close()


async def _send_until_the_server_stops_reading(sock: trio.socket.SocketType, request: bytes) -> None:
    """Pipeline requests until the server takes no more for a second (its answers fill our
    small receive buffer and its send buffer), or closes the connection. Under load this may stop
    early; the test then proves less, but cannot fail for it."""
    chunk = request * 1000
    for _ in range(10_000):
        with trio.move_on_after(1) as waited:
            try:
                await sock.send(chunk)
            except OSError:  # the server has closed the connection already
                return
        if waited.cancelled_caught:
            return


async def test_an_event_for_an_unknown_account_is_refused_without_waiting_for_its_body(tmp_path: Path) -> None:
    from trio_gateway.http.server import HttpServer

    server = HttpServer("127.0.0.1", 0, TOKEN, ENV)
    gateway, _ = build_gateway(tmp_path, config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert server.bound_port is not None
        stream = await trio.open_tcp_stream("127.0.0.1", server.bound_port)
        # A megabyte announced, not a byte sent: the answer comes anyway, and the connection closes.
        await stream.send_all(
            b"POST /channels/slack/nope/events HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n"
        )
        reply = await _read_response(stream)
        assert reply.startswith(b"HTTP/1.1 404")
        assert b"connection: close" in reply.lower()
        await stream.aclose()
        gateway.request_drain("stop")


async def test_unverified_bodies_read_at_once_are_capped(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    raw = cfg.to_json(config())
    raw["gateway"]["maxUnverifiedBodies"] = 1
    gateway, _ = build_gateway(tmp_path, cfg.parse(raw, registry.account_kinds()))
    headers = {"x-slack-request-timestamp": str(int(NOW)), "x-slack-signature": "v0=" + "0" * 64}
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        app = GatewayApp(gateway, TOKEN, ENV, wall_time=lambda: NOW)
        stranger = SlowClient(app)
        nursery.start_soon(stranger, "/channels/slack/T1/events", headers)  # holds the one slot
        await trio.sleep(1)
        busy = await SlowClient(app)("/channels/slack/T1/events", headers)
        assert (busy.status, json.loads(busy.body)["error"]) == (503, "GatewayBusyError")
        health = await Driver(app)("GET", "/healthz", headers={"authorization": ""})
        assert health.status == 200
        await trio.sleep(gateway.config.gateway.body_read_timeout_seconds)  # the stranger's 408 frees it
        signed = await Driver(app)("POST", "/channels/slack/T1/events", SLACK_MESSAGE, slack_headers(SLACK_MESSAGE))
        assert signed.status == 200
        gateway.request_drain("stop", force=True)


async def test_a_restart_resizes_the_unverified_body_slots(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    raw = cfg.to_json(config())
    raw["gateway"]["maxUnverifiedBodies"] = 1
    reloaded = cfg.to_json(config())
    reloaded["gateway"]["maxUnverifiedBodies"] = 2
    kinds = registry.account_kinds()
    gateway, _ = build_gateway(tmp_path, cfg.parse(raw, kinds), load_config=lambda: cfg.parse(reloaded, kinds))
    headers = {"x-slack-request-timestamp": str(int(NOW)), "x-slack-signature": "v0=" + "0" * 64}
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        app = GatewayApp(gateway, TOKEN, ENV, wall_time=lambda: NOW)
        nursery.start_soon(SlowClient(app), "/channels/slack/T1/events", headers)  # holds the one slot
        await trio.sleep(1)
        await gateway.request_drain("restart").done.wait()
        assert gateway.config.gateway.max_unverified_bodies == 2
        # A second stranger now gets the second slot: its body never comes, so a 408, not a 503.
        second = await SlowClient(app)("/channels/slack/T1/events", headers)
        assert (second.status, json.loads(second.body)["error"]) == (408, "RequestTimeoutError")
        gateway.request_drain("stop", force=True)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b'[scenario]\nname = "\xff"\n', "not valid UTF-8"),
        (b"[scenario]\ndurationSeconds = inf\n", "scenario.durationSeconds: expected a finite number"),
        (b'[config]\n"gateway.drain.timeoutSeconds" = 1e308\n', "must be between 0.001 and 86400"),
    ],
)
def test_a_hostile_scenario_file_is_a_scenario_error(tmp_path: Path, data: bytes, says: str) -> None:
    from trio_gateway.scenario.parse import ScenarioError, load

    path = tmp_path / "bad.toml"
    path.write_bytes(data)
    with pytest.raises(ScenarioError, match=says):
        load(path)


@pytest.mark.parametrize("value", ["nan", "inf", "1e306", "0", "-5", "soon"])
def test_gateway_restart_timeout_must_be_in_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--home", str(tmp_path), "gateway", "restart", "--timeout", value])
    assert info.value.code == 2
    assert "must be a number of seconds greater than 0 and at most 86400" in capsys.readouterr().err
