"""Property-based tests over every input the gateway reads at its edges (issue 9): HTTP bodies on
every route, inbound webhook bodies (correctly signed, so the parser is what is tested), and
`gateway.json` as arbitrary JSON, arbitrary bytes and arbitrary values at every known key.

The property: a clear 4xx or `ConfigError` (never a 500, never another exception), the gateway
alive, and the next valid request served. HTTP and webhook examples all meet ONE gateway on the
MockClock (Hypothesis drives from a worker thread, each example is a request on the trio thread),
so each example also meets everything the examples before it left behind. Values that broke the
gateway once (lone surrogates, 1e306, controls in addresses) are drawn half the time; example
counts are modest so the file takes seconds. No deadline and no `too_slow` health check
anywhere: both are wall-clock figures a busy machine can miss.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_http_api import ENV, NOW, SESSION, SLACK_SECRET, TOKEN, Driver, Reply, config

from trio_gateway.errors import ConfigError
from trio_gateway.http.app import GatewayApp
from trio_gateway.log import MemorySink
from trio_gateway.policy import config as cfg
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.runtime import build_gateway
from trio_gateway.storage.config_file import load as load_config_file

# Text as hostile clients send it: any code point, lone surrogates and controls included.
# (`characters()` leaves surrogates out unless asked.)
any_char = st.characters(codec=None) | st.characters(categories=["Cs"]) | st.sampled_from("\n\r\x00\x1b\u2028")
any_text = st.text(any_char, min_size=1, max_size=8)
absurd_numbers = st.sampled_from([1e306, -1e306, 1e-300, 10**400, 0, -1])
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | absurd_numbers | any_text
# The values that broke the gateway once, so every run tries them at every field.
known_hostile = st.sampled_from(
    ["x\ud800", "\udfff", "ops\nINFO [RESTART] forged", "\x1b[2J", "", " ", 1e306, 1e-300, 10**400, -1, 0, True, None]
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def _wire(value: object) -> bytes:
    # ensure_ascii: lone surrogates travel as `\ud800` escapes, non-finite floats as NaN/Infinity.
    return json.dumps(value).encode()


def _leaf_paths(node: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [(*prefix, "extra")]
    for key, child in node.items():
        paths += _leaf_paths(child, (*prefix, key)) if isinstance(child, dict) else [(*prefix, key)]
    return paths


def _mutations(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid body with one field (nested ones too) replaced by anything, or a field added:
    this is where a hostile value gets past the shape checks to the code behind them."""

    def replace(path: tuple[str, ...], value: object) -> bytes:
        body: dict[str, Any] = json.loads(json.dumps(valid))
        node = body
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return _wire(body)

    values = known_hostile | known_hostile | any_text | json_values  # the known ones half the time
    return st.builds(replace, st.sampled_from(_leaf_paths(valid)), values)


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/v1/sessions", SESSION),
    ("POST", "/v1/deliveries", {"channel": "console", "to": "ops", "text": "x", "agentId": "main"}),
    ("POST", "/v1/gateway/restart", {"force": True, "timeoutSeconds": 5}),
    # (`/v1/gateway/stop` reads its body as restart does; a valid one would end the run.)
    ("POST", "/v1/sessions/s-1-1/abort", {}),
    ("POST", "/internal/test/stall-model-call", {"durationMs": 1000}),
    ("GET", "/v1/status", {}),  # GET routes ignore bodies; one stands for them all
]


def requests(method: str, path: str, valid: dict[str, Any]) -> st.SearchStrategy[tuple[str, str, bytes]]:
    bodies = _mutations(valid) | _mutations(valid) | st.binary(max_size=64) | json_values.map(_wire)
    return st.tuples(st.just(method), st.just(path), bodies)


@attrs.frozen
class Served:
    gateway: Gateway
    sink: MemorySink
    call: Driver


# The property is about parsing, not durability: a memory filesystem keeps the session fsyncs
# (10-50 ms each on a busy shared disk) from dominating the run. Plain tmp_path without one.
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[Served]:
    """One whole gateway in a fresh home, for all the examples of a test."""
    with tempfile.TemporaryDirectory(dir=SHM or tmp_path) as home:
        gw, sink = build_gateway(Path(home), config())
        async with trio.open_nursery() as nursery:
            await nursery.start(gw.serve)
            yield Served(gw, sink, Driver(GatewayApp(gw, TOKEN, ENV, wall_time=lambda: NOW)))
            if gw.state.value != "stopped":
                gw.request_drain("stop", force=True)


async def _still_serves(served: Served, reply: Reply, what: str) -> None:
    """The property after any request: not a 500, the process alive, the next valid request served."""
    gw, call = served.gateway, served.call
    errors = [e.text() for e in served.sink.events if e.level == "ERROR"]
    assert reply.status < 500 or reply.status == 503, (what, reply.status, reply.body[:300], errors)
    assert reply.json["error"] if reply.status >= 400 else True
    if gw.draining is not None:
        await gw.draining.done.wait()  # a valid restart or stop: let it finish
    if gw.state.value == "stopped":
        assert "stop" in what, (what, errors)
        return
    after = await call("POST", "/v1/sessions", SESSION)
    errors = [e.text() for e in served.sink.events if e.level == "ERROR"]
    assert after.status == 202, (what, after.body[:300], errors)


async def _against_one_gateway(tmp_path: Path, strategy: st.SearchStrategy[Any], send: Any, examples: int) -> None:
    """Run `examples` Hypothesis examples against ONE running gateway: Hypothesis drives from a
    worker thread and each example is a request on the trio thread. Cheap (a request, not a
    gateway, per example), and stricter: every example meets a gateway that has already seen
    all the hostile input before it."""
    async with serving(tmp_path) as served:

        @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
        @given(strategy)
        def each(item: Any) -> None:
            trio.from_thread.run(send, served, item)

        await trio.to_thread.run_sync(each)


async def _request(served: Served, request: tuple[str, str, bytes]) -> None:
    method, path, body = request
    reply = await served.call(method, path, body)
    await _still_serves(served, reply, f"{method} {path} {body[:200]!r}")


@pytest.mark.parametrize(("method", "path", "valid"), ROUTES, ids=[path for _, path, _ in ROUTES])
async def test_any_body_on_any_route_is_answered_and_the_next_request_served(
    tmp_path: Path, autojump_clock: trio.abc.Clock, method: str, path: str, valid: dict[str, Any]
) -> None:
    await _against_one_gateway(tmp_path, requests(method, path, valid), _request, examples=40)


def _signed(channel: str, body: bytes) -> dict[str, str]:
    if channel == "slack":
        stamp = str(int(NOW))
        digest = hmac.new(SLACK_SECRET.encode(), f"v0:{stamp}:".encode() + body, hashlib.sha256).hexdigest()
        return {"authorization": "", "x-slack-request-timestamp": stamp, "x-slack-signature": f"v0={digest}"}
    return {"authorization": "", "x-telegram-bot-api-secret-token": ENV["TG_SECRET"]}


def _webhook_shapes() -> st.SearchStrategy[tuple[str, bytes]]:
    slack_event = st.fixed_dictionaries(
        {"type": st.just("event_callback") | json_values, "event": json_values | st.fixed_dictionaries(
            {"type": st.just("message"), "channel": any_text | json_values, "text": any_text | json_values})}
    )  # fmt: skip
    telegram = st.fixed_dictionaries(
        {"update_id": json_values, "message": json_values | st.fixed_dictionaries(
            {"chat": json_values | st.fixed_dictionaries({"id": json_values}), "text": json_values})}
    )  # fmt: skip
    fs_token = st.just(ENV["FEISHU_VERIFY"])
    feishu = st.fixed_dictionaries(
        {"type": st.just("url_verification") | json_values, "challenge": json_values, "token": fs_token,
         "header": st.fixed_dictionaries({"event_type": st.just("im.message.receive_v1"), "token": fs_token}),
         "event": json_values | st.fixed_dictionaries({"sender": json_values, "message": st.fixed_dictionaries(
             {"content": any_text | json_values.map(json.dumps)})})}
    )  # fmt: skip
    anything = st.binary(max_size=64) | json_values.map(_wire)
    return (
        st.tuples(st.just("slack"), slack_event.map(_wire) | anything)
        | st.tuples(st.just("telegram"), telegram.map(_wire) | anything)
        | st.tuples(st.just("feishu"), feishu.map(_wire) | anything)
    )


async def _event(served: Served, event: tuple[str, bytes]) -> None:
    channel, body = event
    account = {"slack": "T1", "telegram": "bot1", "feishu": "app1"}[channel]
    reply = await served.call("POST", f"/channels/{channel}/{account}/events", body, _signed(channel, body))
    await _still_serves(served, reply, f"{channel} event {body[:200]!r}")


async def test_any_signed_webhook_body_is_answered_and_the_next_request_served(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    await _against_one_gateway(tmp_path, _webhook_shapes(), _event, examples=60)


# --- gateway.json -------------------------------------------------------------------------------


def _known_keys() -> list[str]:
    """Every dotted key of a config with one of each map entry and list item."""
    example = cfg.to_json(
        cfg.parse(
            {
                "channels": {"slack": {"accounts": {"a": {"baseUrl": "http://x"}}}},
                "cron": [{"id": "c", "agent": "main", "everySeconds": 60, "prompt": "p", "origin": {}}],
            }
        )
    )

    def walk(node: object, prefix: str) -> list[str]:
        if isinstance(node, dict):
            return [k for key, child in node.items() for k in [f"{prefix}{key}", *walk(child, f"{prefix}{key}.")]]
        if isinstance(node, list):
            return [k for i, child in enumerate(node) for k in walk(child, f"{prefix}{i}.")]
        return []

    return walk(example, "")


KNOWN_KEYS = _known_keys()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KNOWN_KEYS), value=json_values)
def test_any_value_at_any_config_key_is_accepted_or_a_config_error(key: str, value: object) -> None:
    raw: dict[str, Any] = {"cron": [{"id": "c", "agent": "main", "everySeconds": 60, "prompt": "p"}]}
    parts = key.split(".")
    node: Any = raw
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value
    try:
        config = cfg.parse(raw)
    except ConfigError as exc:
        problem = (exc.path, exc.what)
    else:
        problem = None
    if problem is not None:
        assert all(problem), problem
        return
    # Whatever was accepted is finite, valid Unicode, and can be written back.
    json.dumps(cfg.to_json(config), allow_nan=False, ensure_ascii=False).encode()


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=200) | json_values.map(_wire) | json_values.map(lambda v: _wire({"gateway": v})))
def test_any_gateway_json_file_is_a_config_or_a_config_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "gateway.json"
    path.write_bytes(data)
    try:
        load_config_file(path)
    except ConfigError as exc:
        problem = exc.what
    else:
        problem = "none"
    assert problem  # a config, or a ConfigError that says what is wrong; nothing else escapes


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.binary(max_size=100) | json_values.map(_wire) | st.sampled_from([b"[" * 100_000, b'{"gateway": 1e400}']))
async def test_a_reload_of_any_file_keeps_the_gateway_up(
    tmp_path: Path, autojump_clock: trio.abc.Clock, data: bytes
) -> None:
    path = tmp_path / "gateway.json"
    path.write_bytes(data)
    gw, _ = build_gateway(tmp_path / "home", config(), load_config=lambda: load_config_file(path))
    call = Driver(GatewayApp(gw, TOKEN, ENV, wall_time=lambda: NOW))
    async with trio.open_nursery() as nursery:
        await nursery.start(gw.serve)
        reply = await call("POST", "/v1/gateway/restart", {"wait": True, "force": True})
        assert (reply.status, reply.json["generation"]) == (200, 2)
        assert (await call("POST", "/v1/sessions", SESSION)).status == 202
        gw.request_drain("stop", force=True)
    assert gw.state.value == "stopped"
