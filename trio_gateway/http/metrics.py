"""`GET /metrics`: the gateway's numbers in the Prometheus text format, on prometheus-client.

Everything is read from the gateway at scrape time by a custom `Collector` (no second set of
counters to keep in step with the runtime); prometheus-client adds the process metrics
(`process_*`: CPU, memory, open files), the Python runtime's (`python_*`) and writes the text.
Each scrape builds its own `CollectorRegistry`: no global registry, nothing kept between scrapes.
Verified under hypercorn's Trio worker: `collect()` is plain synchronous code.

The families are written through `_Exposition` (`family`, then its `sample`s), so adding one is
two lines in one of the functions below.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as _generate
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from trio_gateway.version import __version__

if TYPE_CHECKING:
    from trio_gateway.runtime.gateway import Gateway

CONTENT_TYPE = CONTENT_TYPE_LATEST
# Drain durations of interest run from a forced restart (well under a second) to the longest
# drain timeout anyone should configure.
_DRAIN_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_PREFIX = "trio_gateway_"
# A listener's stop is its scope's cancel plus a bounded platform call (channelStopTimeoutSeconds).
_CHANNEL_STOP_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


@attrs.define
class _Exposition:
    """The families of one scrape, built as prometheus-client `Metric`s."""

    metrics: list[Metric] = attrs.Factory(list)
    # Labels on every sample: in cluster mode {"node": ...}, so one scrape config serves all nodes.
    base: dict[str, str] = attrs.Factory(dict)

    def family(self, name: str, kind: str, help_text: str) -> None:
        # prometheus-client names a counter family without its `_total`; its samples keep it.
        family = name.removesuffix("_total") if kind == "counter" else name
        self.metrics.append(Metric(_PREFIX + family, help_text, kind))

    def sample(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        self.metrics[-1].add_sample(_PREFIX + name, {**self.base, **(labels or {})}, float(value))


def _number(value: float) -> str:
    """A bucket bound as Prometheus writes it (`le="1"`, `le="+Inf"`)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@attrs.define(eq=False)
class _GatewayCollector(Collector):
    gateway: Gateway
    base: dict[str, str] = attrs.Factory(dict)

    def collect(self) -> Iterator[Metric]:
        out = _Exposition(base=self.base)
        _lifecycle(out, self.gateway)
        _work(out, self.gateway)
        _drains(out, self.gateway)
        _delivery(out, self.gateway)
        _inbound(out, self.gateway)
        _tools(out, self.gateway)
        _models(out, self.gateway)
        _loop(out, self.gateway)
        return iter(out.metrics)


@attrs.define(eq=False)
class _Labelled(Collector):
    """Another collector's families with `base` added to every sample (the cluster node)."""

    inner: Collector
    base: dict[str, str]

    def collect(self) -> Iterator[Metric]:
        for metric in self.inner.collect():
            metric.samples = [s._replace(labels={**self.base, **s.labels}) for s in metric.samples]
            yield metric


def registry(gateway: Gateway) -> CollectorRegistry:
    node = gateway.deps.describe_storage().get("nodeId")
    base = {"node": str(node)} if node else {}
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_GatewayCollector(gateway, base))
    # Built on a scratch registry (they register themselves), then registered here with the node
    # label added: one scrape config serves every node, the process metrics included.
    scratch = CollectorRegistry(auto_describe=False)
    for runtime in (
        ProcessCollector(registry=scratch),
        PlatformCollector(registry=scratch),
        GCCollector(registry=scratch),
    ):
        reg.register(_Labelled(runtime, base) if base else runtime)
    return reg


def render(gateway: Gateway) -> str:
    return _generate(registry(gateway)).decode()


def _lifecycle(out: _Exposition, gateway: Gateway) -> None:
    out.family("build_info", "gauge", "Always 1; the running trio-gateway version as a label")
    out.sample("build_info", 1, {"version": __version__})
    out.family("generation", "gauge", "Number of the generation currently accepting work")
    out.sample("generation", gateway.generation_number)
    out.family("state", "gauge", "1 for the gateway's current lifecycle state")
    for state in ("starting", "running", "draining", "stopped"):
        out.sample("state", 1 if gateway.state.value == state else 0, {"state": state})
    out.family("uptime_seconds", "gauge", "Seconds since the gateway started")
    out.sample("uptime_seconds", round(trio.current_time() - gateway.started_at, 3))


def _work(out: _Exposition, gateway: Gateway) -> None:
    units = gateway.registry.units()
    out.family("sessions", "gauge", "Known sessions")
    out.sample("sessions", len(gateway.sessions))
    out.family("sessions_active", "gauge", "Sessions with work running")
    out.sample("sessions_active", sum(1 for s in gateway.sessions.values() if s.busy))
    out.family("work_active", "gauge", "Active units of work by kind")
    for kind, n in sorted(Counter(u.kind for u in units).items()):
        out.sample("work_active", n, {"kind": kind})
    out.family("sessions_stalled", "gauge", "Sessions with a unit of work reported stalled")
    out.sample("sessions_stalled", len({u.session_id for u in units if u.stall_reported}))
    out.family("stalls_total", "counter", "Stalled units detected by the watchdog")
    out.sample("stalls_total", gateway.watchdog.stalled_total if gateway.watchdog is not None else 0)
    out.family("aborts_total", "counter", "Units of work aborted, by kind")
    for aborted_kind, n in sorted(gateway.registry.aborts_by_kind.items()):
        out.sample("aborts_total", n, {"kind": aborted_kind})


def _drains(out: _Exposition, gateway: Gateway) -> None:
    reports = list(gateway.drains)
    out.family("drains_total", "counter", "Completed drains by kind and whether the deadline aborted work")
    tally = Counter((r.kind, "timed_out" if r.timed_out else "clean") for r in reports)
    for (kind, outcome), n in sorted(tally.items()):
        out.sample("drains_total", n, {"kind": kind, "outcome": outcome})
    out.family("drain_duration_seconds", "histogram", "Seconds from a drain request to its work being gone")
    _histogram(out, "drain_duration_seconds", [r.waited_seconds for r in reports], _DRAIN_BUCKETS)


def _histogram(out: _Exposition, name: str, values: Iterable[float], buckets: tuple[float, ...]) -> None:
    values = list(values)
    for bound in (*buckets, math.inf):
        out.sample(f"{name}_bucket", sum(1 for v in values if v <= bound), {"le": _number(bound)})
    out.sample(f"{name}_sum", round(sum(values), 6))
    out.sample(f"{name}_count", len(values))


def _delivery(out: _Exposition, gateway: Gateway) -> None:
    counts = gateway.delivery.counts() if gateway.delivery is not None else {}
    out.family("delivery_queue_pending", "gauge", "Delivery entries waiting to be sent")
    out.sample("delivery_queue_pending", counts.get("pending", 0))
    out.family("delivery_dead_letters", "gauge", "Delivery entries in failed/")
    out.sample("delivery_dead_letters", counts.get("failed", 0))
    outcomes = _outcomes(gateway.delivery)
    if outcomes:
        out.family("deliveries_total", "counter", "Delivery attempts by channel and outcome")
        for (channel, outcome), n in sorted(outcomes.items()):
            out.sample("deliveries_total", n, {"channel": channel, "outcome": outcome})


def _inbound(out: _Exposition, gateway: Gateway) -> None:
    stats = gateway.listeners.stats if gateway.listeners is not None else None
    out.family("inbound_messages_total", "counter", "Messages heard by a channel listener that became turns")
    for (channel, account), n in sorted(stats.messages.items() if stats else []):
        out.sample("inbound_messages_total", n, {"channel": channel, "account": account})
    out.family("inbound_rejected_total", "counter", "Messages a listener set aside as poison (inbound/.../rejected/)")
    for (channel, account), n in sorted(stats.rejected.items() if stats else []):
        out.sample("inbound_rejected_total", n, {"channel": channel, "account": account})
    out.family("channel_stop_seconds", "histogram", "Seconds from a drain's start to a listener stopped")
    _histogram(out, "channel_stop_seconds", stats.stop_seconds if stats else [], _CHANNEL_STOP_BUCKETS)
    access = gateway.listeners.access if gateway.listeners is not None else None
    out.family("inbound_refused_total", "counter", "Messages heard that the access rules kept from the agent (SPEC 15)")
    for (channel, account, reason), n in sorted(access.refused.items() if access else []):
        out.sample("inbound_refused_total", n, {"channel": channel, "account": account, "reason": reason})


def _outcomes(delivery: Any) -> dict[tuple[str, str], int]:
    """Attempt outcomes by (channel, outcome), when the delivery service keeps them: an
    optional `outcome_counts()` so the metric appears the day it does, and nothing breaks
    while it does not."""
    get = getattr(delivery, "outcome_counts", None)
    if not callable(get):
        return {}
    try:
        raw = get()
        return {(str(c), str(o)): int(n) for (c, o), n in raw.items()}
    except (TypeError, ValueError, AttributeError):
        return {}


def _tools(out: _Exposition, gateway: Gateway) -> None:
    """SPEC 14: tool calls by outcome (this generation's), and each MCP server's state."""
    tools = gateway.tools
    if tools is None:
        return
    out.family("tool_calls_total", "counter", "Tool calls by kind (mcp, http) and outcome")
    for (kind, outcome), n in sorted(tools.outcomes.items()):
        out.sample("tool_calls_total", n, {"kind": kind, "outcome": outcome})
    # Each family's samples right after its own `# TYPE` line: a sample belongs to the family
    # declared last, so two families declared back to back leave the first one empty and the
    # second one holding both names (prometheus-client then reads them as untyped).
    out.family("mcp_server_up", "gauge", "1 when the MCP server is connected and serving calls")
    for server in tools.servers.values():
        out.sample("mcp_server_up", 1 if server.state == "running" else 0, {"server": server.name})
    out.family("mcp_server_restarts", "gauge", "Times the MCP server was restarted in this generation")
    for server in tools.servers.values():
        out.sample("mcp_server_restarts", server.restarts, {"server": server.name})


def _models(out: _Exposition, gateway: Gateway) -> None:
    """SPEC 16: tokens by model and direction, calls by model and outcome, since start."""
    ledger = gateway.deps.model_ledger
    out.family("model_tokens_total", "counter", "Model tokens as the provider reported them, by model and direction")
    for model, usage in sorted(ledger.by_model.items()):
        for direction, n in usage.by_direction().items():
            out.sample("model_tokens_total", n, {"model": model, "direction": direction})
    out.family("model_calls_total", "counter", "Model calls (each try of a fallback chain) by model and outcome")
    for (model, outcome), n in sorted(ledger.calls.items()):
        out.sample("model_calls_total", n, {"model": model, "outcome": outcome})


def _loop(out: _Exposition, gateway: Gateway) -> None:
    """Steps of one task that held the event loop longer than `gateway.loopBlockWarnMs`."""
    watch = gateway.loop_watch
    if watch is None:
        return
    blocked = watch.blocked
    out.family("event_loop_blocked_seconds", "histogram", "Task steps that blocked the event loop past the threshold")
    for bound, seen in blocked.cumulative():
        out.sample("event_loop_blocked_seconds_bucket", seen, {"le": _number(bound)})
    out.sample("event_loop_blocked_seconds_sum", round(blocked.total_seconds, 6))
    out.sample("event_loop_blocked_seconds_count", blocked.count)
