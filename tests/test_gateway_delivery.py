"""The whole runtime with the real durable queue and real channel adapters, against the fake
channel servers in-process, on MockClock: the seed's incidents end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio

from trio_gateway.app.assemble import queue_delivery
from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.runtime import gateway_deps, quick_config
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.home import Home

ACCOUNT = "2005b227a854-im-bot"
WEIXIN_USER = "o9cq80abc@im.wechat"
ENV = {"FEISHU_APP_SECRET": "s3cret-feishu", "WEIXIN_TOKEN": "s3cret-weixin"}


def seed_raw(url: str) -> dict[str, object]:
    """The seed's gateway: agent bound to Feishu first, WeChat second; a WeChat-origin cron."""
    return {
        "gateway": {"stalledTaskDetection": {"thresholdSeconds": 30}},
        "channels": {
            "feishu": {"accounts": {ACCOUNT: {"baseUrl": url, "appId": "cli_a1", "appSecretEnv": "FEISHU_APP_SECRET"}}},
            "openclaw-weixin": {"accounts": {ACCOUNT: {"baseUrl": url, "tokenEnv": "WEIXIN_TOKEN"}}},
        },
        "agents": {"main": {"accountId": ACCOUNT, "channels": ["feishu", "openclaw-weixin"]}},
        "delivery": {"initialBackoffSeconds": 5, "maxBackoffSeconds": 60},
        "cron": [
            {
                "id": "digest",
                "agent": "main",
                "everySeconds": 3600,
                "prompt": "/spawn main /fail",
                "origin": {"channel": "openclaw-weixin", "to": WEIXIN_USER, "accountId": ACCOUNT},
            }
        ],
    }


def real_gateway(
    tmp_path: Path, fakes: FakeChannels, deps: dict[str, Any] | None = None, **overrides: object
) -> tuple[Gateway, MemorySink]:
    raw: dict[str, object] = {**seed_raw("http://fake.invalid"), **overrides}
    config = quick_config(**raw)
    sink = MemorySink()
    log = EventLog([sink])
    delivery = queue_delivery(Home(tmp_path), log, ENV, inline, transport=fakes.transport())
    return Gateway(gateway_deps(tmp_path, config, log, delivery_factory=delivery, **(deps or {})), config), sink


def queue_files(tmp_path: Path, sub: str = "") -> list[dict[str, object]]:
    folder = tmp_path / "delivery-queue" / sub
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


async def test_seed_weixin_cron_subagent_failure_reaches_weixin_and_never_feishu(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    fakes = FakeChannels(tokens={"openclaw-weixin": "s3cret-weixin"})
    gateway, sink = real_gateway(tmp_path, fakes)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await trio.sleep(3600 + 5)
        gateway.request_drain("stop")
    delivered = fakes.delivered("openclaw-weixin")
    texts = sorted(d.text for d in delivered)
    assert len(delivered) == 2  # the cron run's own reply and the subagent's failure notice
    assert any(t.startswith("Subagent ") and "failed" in t for t in texts)
    assert {d.to for d in delivered} == {WEIXIN_USER}
    assert fakes.requests_to("feishu") == []
    assert queue_files(tmp_path) == []  # all acknowledged
    assert len(sink.tagged("DELIVERY")) >= 2


async def test_drain_does_not_wait_for_retrying_deliveries(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    fakes = FakeChannels(tokens={"openclaw-weixin": "s3cret-weixin"})
    fakes.fail("openclaw-weixin", times=None)  # every send fails with 503 until accept()
    gateway, sink = real_gateway(tmp_path, fakes, cron=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert gateway.delivery is not None
        for i in range(20):
            await gateway.delivery.outbox.submit(
                kind="reply",
                origin=Origin("openclaw-weixin", f"user{i}@im.wechat", ACCOUNT),
                agent_id="main",
                text=f"notice {i}",
            )
        await trio.sleep(30)  # several retries each, now waiting on backoff timers
        attempts_before = {e["id"]: e["attempts"] for e in queue_files(tmp_path)}
        assert len(attempts_before) == 20
        assert all(a >= 1 for a in attempts_before.values())
        requested = trio.current_time()
        await gateway.request_drain("restart").done.wait()
        assert trio.current_time() - requested == pytest.approx(0.0, abs=0.01)
        attempts_after = {e["id"]: e["attempts"] for e in queue_files(tmp_path)}
        assert attempts_after == attempts_before  # the drain counted no attempt
        fakes.accept()
        await trio.sleep(120)  # generation 2's worker picks the files up from disk
        gateway.request_drain("stop")
    assert len({d.text for d in fakes.delivered("openclaw-weixin")}) == 20
    assert queue_files(tmp_path) == []
    assert "[DRAINING] Starting graceful drain of 0 task(s), timeout=60000ms" in [
        f"[{e.tag}] {e.message}" for e in sink.events
    ]


async def test_permanent_rejection_dead_letters_at_once(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    fakes = FakeChannels(tokens={"openclaw-weixin": "s3cret-weixin"})
    gateway, _ = real_gateway(tmp_path, fakes, cron=[])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        assert gateway.delivery is not None
        await gateway.delivery.outbox.submit_manual("feishu", "ou_bad", ACCOUNT, "main", "hello")
        fakes.reject("feishu", code=99992360, status=400, message="Invalid ids")
        await trio.sleep(10)
        gateway.request_drain("stop")
    failed = queue_files(tmp_path, "failed")
    assert len(failed) == 1
    assert "99992360" in str(failed[0]["failedReason"])
    assert failed[0]["attempts"] == 1
    assert len(fakes.requests_to("feishu")) == 1


async def test_reload_with_a_missing_secret_keeps_the_running_config(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    from trio_gateway.app.assemble import preflight
    from trio_gateway.channels.registry import account_kinds
    from trio_gateway.policy.config import parse

    fakes = FakeChannels()
    bad = parse({**seed_raw("http://x"), "cron": []}, account_kinds())
    reload = {"load_config": lambda: bad, "preflight": lambda config: preflight(config, {})}
    gateway, sink = real_gateway(tmp_path, fakes, reload, cron=[])
    with pytest.raises(ConfigError, match="environment variable FEISHU_APP_SECRET is not set"):
        preflight(bad, {})
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        old = gateway.config
        await gateway.request_drain("restart").done.wait()
        assert gateway.config is old
        assert gateway.generation_number == 2
        gateway.request_drain("stop")
    assert any("Config reload failed" in e.message for e in sink.tagged("RESTART"))
