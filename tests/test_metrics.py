"""`/metrics` on prometheus-client (SPEC 5): every family the contract names, read at scrape
time, in-process on MockClock and once through real hypercorn under the Trio worker."""

from __future__ import annotations

from pathlib import Path

import httpx2
import trio
from prometheus_client.parser import text_string_to_metric_families

from trio_gateway import __version__
from trio_gateway.http import metrics
from trio_gateway.http.server import HttpServer
from trio_gateway.policy import config as cfg
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.harness import Harness, fake_account
from trio_gateway.sim.runtime import build_gateway, quick_config

TOKEN = "metrics-token"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parsed with prometheus-client's own parser: the text is valid exposition format."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def stalled_config() -> cfg.Config:
    return cfg.parse(
        {
            "gateway": {
                "testEndpoints": {"enabled": True},
                "drain": {"timeoutSeconds": 5},
                # Reported but left running, so the stalled session is still there to count.
                "stalledTaskDetection": {
                    "thresholdSeconds": 10,
                    "checkIntervalSeconds": 1,
                    "recovery": {"model_call": "none"},
                },
            }
        }
    )


async def test_every_spec_family_is_read_at_scrape_time(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    gateway, _ = build_gateway(tmp_path, stalled_config())
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        await gateway.stall_model_call(None, 600)
        await trio.sleep(15)
        during = samples(metrics.render(gateway))
        gateway.request_drain("restart")
        await gateway.state.wait_value(lambda s: s == "running" and gateway.generation_number == 2)
        after = samples(metrics.render(gateway))
        gateway.request_drain("stop", force=True)
    assert during[("trio_gateway_sessions_active", frozenset())] == 1
    assert during[("trio_gateway_work_active", frozenset({("kind", "model_call")}))] == 1
    assert during[("trio_gateway_sessions_stalled", frozenset())] == 1
    assert during[("trio_gateway_stalls_total", frozenset())] == 1
    assert during[("trio_gateway_build_info", frozenset({("version", __version__)}))] == 1
    assert after[("trio_gateway_generation", frozenset())] == 2
    assert after[("trio_gateway_aborts_total", frozenset({("kind", "model_call")}))] == 1
    assert after[("trio_gateway_drains_total", frozenset({("kind", "restart"), ("outcome", "timed_out")}))] == 1
    assert after[("trio_gateway_drain_duration_seconds_count", frozenset())] == 1
    assert 5 <= after[("trio_gateway_drain_duration_seconds_sum", frozenset())] < 7
    assert ("trio_gateway_delivery_queue_pending", frozenset()) in after  # counted: below
    assert ("trio_gateway_delivery_dead_letters", frozenset()) in after
    assert after[("process_resident_memory_bytes", frozenset())] > 0


async def test_the_queue_gauges_count_what_the_queue_holds(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """Real queue, real worker, the fake Telegram: 2 replies it refuses (dead letters), then 3
    it keeps failing with 503 (pending, retried with backoff). The gauges say 3 and 2."""
    config = quick_config(
        **{
            "channels.telegram.accounts.bot1": fake_account("telegram"),
            "agents.main.channels": ["telegram"],
            "delivery.initialBackoffSeconds": 60,
            "delivery.rescanIntervalSeconds": 1,
        }
    )
    harness = Harness.build(tmp_path, config)
    gateway, fakes = harness.gateway, harness.channels
    chat = Origin("telegram", "555", "bot1")
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        fakes.reject("telegram", status=400, times=2)
        for text in ("a", "b"):
            await gateway.submit(agent_id="main", origin=chat, prompt=text)
        await harness.tap.wait_attempts(2)
        fakes.fail("telegram", times=None)
        for text in ("c", "d", "e"):
            await gateway.submit(agent_id="main", origin=chat, prompt=text)
        tried = await harness.tap.wait_attempts(5)  # every one tried once, and failed
        await trio.sleep(2)  # a rescan: the dead-letter count is read from the disk
        scraped = samples(metrics.render(gateway))
        assert [a.outcome for a in tried] == ["permanent"] * 2 + ["retry"] * 3
        assert (len(await harness.pending()), len(await harness.dead_letters())) == (3, 2)
        gateway.request_drain("stop", force=True)
    assert scraped[("trio_gateway_delivery_queue_pending", frozenset())] == 3
    assert scraped[("trio_gateway_delivery_dead_letters", frozenset())] == 2


async def test_scraped_through_hypercorn_under_trio(tmp_path: Path) -> None:
    server = HttpServer("127.0.0.1", 0, TOKEN, {})
    gateway, _ = build_gateway(tmp_path, stalled_config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        async with httpx2.AsyncClient(base_url=server.urls[0], trust_env=False) as client:
            reply = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            refused = await client.get("/metrics")
        gateway.request_drain("stop")
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain; version=")
    found = samples(reply.text)
    assert found[("trio_gateway_generation", frozenset())] == 1
    assert found[("process_open_fds", frozenset())] > 0
    assert refused.status_code == 401


async def test_cluster_node_label_is_on_every_sample_process_metrics_included(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """SPEC 12: one scrape config serves every node, so each sample names its node, the
    prometheus-client runtime families (process_*, python_*) as much as the gateway's."""
    node = {"backend": "postgres", "nodeId": "node-b"}
    gateway, _ = build_gateway(tmp_path, cfg.Config(), describe_storage=lambda: node)
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        scraped = samples(metrics.render(gateway))
        gateway.request_drain("stop", force=True)
    assert scraped[("trio_gateway_generation", frozenset({("node", "node-b")}))] == 1
    assert scraped[("process_resident_memory_bytes", frozenset({("node", "node-b")}))] > 0
    assert any(name == "python_info" for name, _ in scraped)
    assert all(("node", "node-b") in labels for _, labels in scraped)


async def test_a_read_only_metrics_token_opens_metrics_and_nothing_else(tmp_path: Path) -> None:
    """SPEC 5: a Prometheus job holds `metrics.token`, never the key that can stop the gateway.
    Read at each scrape: a token made while the gateway runs works at once."""
    metrics_token = tmp_path / "metrics.token"
    server = HttpServer("127.0.0.1", 0, TOKEN * 4, {}, metrics_token_path=metrics_token)
    gateway, _ = build_gateway(tmp_path / "home", stalled_config(), servers=[server.serve])
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.serve)
        async with httpx2.AsyncClient(base_url=server.urls[0], trust_env=False) as client:
            before = await client.get("/metrics", headers={"Authorization": "Bearer " + "m" * 43})
            metrics_token.write_text("m" * 43 + "\n")
            metrics_token.chmod(0o600)
            reader = {"Authorization": "Bearer " + "m" * 43}
            scraped = await client.get("/metrics", headers=reader)
            status = await client.get("/v1/status", headers=reader)
            stop = await client.post("/v1/gateway/stop", headers=reader)
            admin = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN * 4}"})
            nobody = await client.get("/metrics")
        gateway.request_drain("stop")
    assert before.status_code == 401
    assert scraped.status_code == 200
    assert samples(scraped.text)[("trio_gateway_generation", frozenset())] == 1
    assert (status.status_code, stop.status_code) == (401, 401)
    assert admin.status_code == 200
    assert nobody.status_code == 401
