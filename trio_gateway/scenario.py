"""Scripted restart rehearsals (SPEC 9): a TOML file run on the REAL runtime under MockClock.

    [scenario]   name, description, durationSeconds (virtual), seed
    [config]     dotted camelCase overrides of gateway.json ("gateway.drain.timeoutSeconds" = 60)
    [model]      the fake model: behaviour = echo | stall | fail, delaySeconds
    [channels.C] a fake channel: mode = accept | reject | fail, code, failTimes, delaySeconds
    [[action]]   at = seconds, type = start_session | spawn_subagent | restart | force_restart | stop
                 | stall_model_call | kill_upstream | inject_deliveries
    [[expect]]   type = log | delivery | dead_letter | restart_within | no_request | generation | drains

Nothing here models the gateway: `Harness` wires a real `Gateway` (sessions, watchdog, drain,
the on-disk delivery queue and its worker) to in-process fakes for the two upstreams, the
model and the channels. `trio.run(..., clock=MockClock(autojump_threshold=0))` makes a
60-second drain take milliseconds; the timeline is read back from the event log, whose
events carry the virtual time they happened at.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs
import trio
import trio.testing
from trio_util import AsyncValue, move_on_when

from trio_gateway import config as cfg
from trio_gateway.classify import OK, Outcome
from trio_gateway.delivery import QueueDelivery
from trio_gateway.drain import DrainReport
from trio_gateway.entry import DeliveryEntry
from trio_gateway.errors import ConfigError, GatewayError, ModelCallError
from trio_gateway.gateway import Gateway
from trio_gateway.log import Event, EventLog, MemorySink
from trio_gateway.models.base import Message, ModelReply
from trio_gateway.queue import DeliveryQueue
from trio_gateway.routing import Origin
from trio_gateway.testing.runtime import ScriptedModel, build_gateway
from trio_gateway.work import WorkUnit


class ScenarioError(GatewayError):
    """A scenario file that cannot be run: names the file, the line and the key."""

    exit_code = 2
    http_status = 400


# --- the file format ------------------------------------------------------------------------


@attrs.frozen
class ScenarioMeta:
    name: str = ""
    description: str = ""
    # How long (virtual seconds) the rehearsal watches after generation 1 accepts work.
    duration_seconds: float = 600.0
    seed: int = 0  # the delivery worker's backoff jitter: the same file gives the same timeline


ModelBehaviour = Literal["echo", "stall", "fail"]


@attrs.frozen
class ModelSpec:
    """Every call answers after `delaySeconds` (no progress meanwhile, like a non-streaming
    call), per `behaviour`. Prompt directives (`/stall`, `/slow N T`, `/spawn A T`, `/fail`) win."""

    behaviour: ModelBehaviour = "echo"
    delay_seconds: float = 0.0


ChannelMode = Literal["accept", "reject", "fail"]


@attrs.frozen
class ChannelSpec:
    """`reject`: a permanent refusal with `code` (HTTP status). `fail`: a retryable 503 for the
    first `failTimes` attempts (every attempt when omitted), then accept."""

    mode: ChannelMode = "accept"
    code: int = 400
    fail_times: int | None = None
    delay_seconds: float = 0.0
    # Accounts written into the config when `[config]` does not configure this channel.
    accounts: list[str] = attrs.Factory(lambda: ["default"])


@attrs.frozen
class StartSession:
    """One turn, or `count` turns; `{i}` in `to` or `prompt` is replaced by 0..count-1 (a
    distinct `to` makes a distinct session)."""

    at: float
    agent: str = "main"
    channel: str = "console"
    to: str = "ops"
    account: str | None = None
    prompt: str = "hello"
    count: int = 1


@attrs.frozen
class SpawnSubagent:
    """A session turn whose model asks for the `spawn_subagent` tool (`/spawn AGENT TASK`)."""

    at: float
    task: str
    agent: str = "main"
    subagent: str | None = None
    channel: str = "console"
    to: str = "ops"
    account: str | None = None


@attrs.frozen
class Restart:
    """A drain, then generation N+1; `force` aborts the work at once. A request while a drain
    runs joins it (one drain at a time)."""

    at: float
    force: bool = False
    timeout_seconds: float | None = None


@attrs.frozen
class ForceRestart:
    at: float


@attrs.frozen
class Stop(Restart):
    """A drain, then the gateway exits: the scenario ends there."""


@attrs.frozen
class StallModelCall:
    """The test endpoint's stall: a new turn whose model call makes no progress for `seconds`."""

    at: float
    seconds: float = 3600.0


@attrs.frozen
class KillUpstream:
    """The model server's connections drop: every model call in flight fails at once."""

    at: float


@attrs.frozen
class InjectDeliveries:
    """`count` entries enqueued straight into the delivery queue (as `delivery create` does)."""

    at: float
    channel: str
    to: str
    count: int = 1
    account: str | None = None
    agent: str = "main"
    text: str = "injected delivery"


Action = StartSession | SpawnSubagent | Restart | ForceRestart | StallModelCall | KillUpstream | InjectDeliveries

ACTION_TYPES: dict[str, type[Any]] = {
    "start_session": StartSession,
    "start_sessions": StartSession,
    "spawn_subagent": SpawnSubagent,
    "restart": Restart,
    "force_restart": ForceRestart,
    "stop": Stop,
    "stall_model_call": StallModelCall,
    "kill_upstream": KillUpstream,
    "inject_deliveries": InjectDeliveries,
    "inject_failing_deliveries": InjectDeliveries,
}


# --- what a run observed --------------------------------------------------------------------


@attrs.frozen
class ChannelRequest:
    at: float  # scenario seconds
    channel: str
    to: str
    account_id: str | None
    kind: str
    outcome: str


@attrs.define
class RestartRecord:
    kind: str
    force: bool
    requested_at: float  # scenario seconds
    done_at: float | None = None
    generation: int | None = None


@attrs.frozen
class Observation:
    """Everything expectations judge, in scenario seconds (0 = generation 1 accepting work)."""

    events: list[Event]
    t0: float
    requests: list[ChannelRequest]
    dead_letters: list[DeliveryEntry]
    restarts: list[RestartRecord]
    drains: list[DrainReport]
    generation: int

    def at(self, event: Event) -> float:
        return (event.clock if event.clock is not None else self.t0) - self.t0


Check = tuple[bool, str]


def _by(limit: float | None) -> str:
    return "" if limit is None else f" by {limit:g}s"


@attrs.frozen
class LogExpect:
    tag: str
    contains: str | None = None
    by: float | None = None
    count: int | None = None  # exactly this many; default: at least one

    def describe(self) -> str:
        what = f"[{self.tag}]" + (f" {self.contains!r}" if self.contains else "")
        many = "" if self.count is None else f" exactly {self.count} time(s)"
        return f"log {what}{many}{_by(self.by)}"

    def check(self, obs: Observation) -> Check:
        hits = [
            e
            for e in obs.events
            if e.tag == self.tag
            and (self.contains is None or self.contains in e.message)
            and (self.by is None or obs.at(e) <= self.by + 1e-9)
        ]
        first = f"first at {obs.at(hits[0]):.3f}s" if hits else "none seen"
        if self.count is not None:
            return len(hits) == self.count, f"seen {len(hits)} time(s); {first}"
        return bool(hits), first


@attrs.frozen
class DeliveryExpect:
    channel: str
    to: str | None = None
    kind: str | None = None
    by: float | None = None

    def describe(self) -> str:
        to = f" to {self.to}" if self.to else ""
        kind = f" ({self.kind})" if self.kind else ""
        return f"delivery{kind} on {self.channel}{to}{_by(self.by)}"

    def check(self, obs: Observation) -> Check:
        hits = [
            r
            for r in obs.requests
            if r.outcome == "ok"
            and r.channel == self.channel
            and (self.to is None or r.to == self.to)
            and (self.kind is None or r.kind == self.kind)
            and (self.by is None or r.at <= self.by + 1e-9)
        ]
        if hits:
            return True, f"{len(hits)} accepted; first at {hits[0].at:.3f}s"
        seen = sorted({f"{r.channel}:{r.to}({r.kind},{r.outcome})" for r in obs.requests})
        return False, f"none accepted; requests seen: {', '.join(seen) or 'none'}"


@attrs.frozen
class DeadLetterExpect:
    reason: str = ""
    channel: str | None = None
    count: int | None = None

    def describe(self) -> str:
        on = f" on {self.channel}" if self.channel else ""
        many = "" if self.count is None else f" x{self.count}"
        return f"dead letter{on} with reason containing {self.reason!r}{many}"

    def check(self, obs: Observation) -> Check:
        hits = [
            d
            for d in obs.dead_letters
            if self.reason in (d.failed_reason or "") and (self.channel is None or d.channel == self.channel)
        ]
        reasons = sorted({d.failed_reason or "" for d in obs.dead_letters})
        detail = f"{len(hits)} matching of {len(obs.dead_letters)}; reasons: {reasons[:3]}"
        return (len(hits) == self.count if self.count is not None else bool(hits)), detail


@attrs.frozen
class RestartWithin:
    """Every restart request saw its new generation accept work within `seconds`."""

    seconds: float

    def describe(self) -> str:
        return f"every restart completes within {self.seconds:g}s of its request"

    def check(self, obs: Observation) -> Check:
        restarts = [r for r in obs.restarts if r.kind == "restart"]
        if not restarts:
            return False, "no restart was requested"
        took = [(r.done_at - r.requested_at) if r.done_at is not None else None for r in restarts]
        shown = ", ".join("never" if t is None else f"{t:.3f}s" for t in took)
        ok = all(t is not None and t <= self.seconds + 1e-9 for t in took)
        return ok, f"took {shown}"


@attrs.frozen
class NoRequest:
    channel: str

    def describe(self) -> str:
        return f"no request to {self.channel}"

    def check(self, obs: Observation) -> Check:
        hits = [r for r in obs.requests if r.channel == self.channel]
        return not hits, f"{len(hits)} request(s)" + (f", first to {hits[0].to}" if hits else "")


@attrs.frozen
class GenerationExpect:
    reached: int

    def describe(self) -> str:
        return f"generation {self.reached} reached"

    def check(self, obs: Observation) -> Check:
        return obs.generation >= self.reached, f"generation {obs.generation}"


@attrs.frozen
class DrainsExpect:
    count: int
    kind: Literal["restart", "stop"] | None = None

    def describe(self) -> str:
        return f"exactly {self.count} {self.kind or 'restart or stop'} drain(s)"

    def check(self, obs: Observation) -> Check:
        drains = [d for d in obs.drains if self.kind is None or d.kind == self.kind]
        return len(drains) == self.count, f"{len(drains)} drain(s)"


class Expectation(Protocol):
    def describe(self) -> str: ...

    def check(self, obs: Observation) -> Check: ...


EXPECT_TYPES: dict[str, type[Any]] = {
    "log": LogExpect,
    "delivery": DeliveryExpect,
    "dead_letter": DeadLetterExpect,
    "restart_within": RestartWithin,
    "no_request": NoRequest,
    "generation": GenerationExpect,
    "drains": DrainsExpect,
}


@attrs.frozen
class Scenario:
    meta: ScenarioMeta
    config: cfg.Config
    model: ModelSpec
    channels: dict[str, ChannelSpec]
    actions: list[Action]
    expects: list[Expectation]
    source: str = "<scenario>"


# --- parsing --------------------------------------------------------------------------------

_TOP_KEYS = ("scenario", "config", "model", "channels", "action", "expect")


@attrs.frozen
class _Lines:
    """Where things are in the file, so an error can name a line."""

    text: str

    def header(self, name: str, index: int | None = None) -> int | None:
        pattern = rf"^\s*\[\[\s*{re.escape(name)}\s*\]\]" if index is not None else rf"^\s*\[\s*{re.escape(name)}\s*\]"
        hits = [n for n, line in enumerate(self.text.splitlines(), 1) if re.match(pattern, line)]
        if index is None:
            return hits[0] if hits else None
        return hits[index] if index < len(hits) else None


def _fail(source: str, line: int | None, path: str, what: str) -> ScenarioError:
    where = f"{source}: line {line}" if line is not None else source
    return ScenarioError(f"{where}: {path}: {what}")


def _structure(raw: object, cls: type[Any], source: str, line: int | None, path: str) -> Any:
    try:
        return cfg.structure(raw, cls)
    except ConfigError as exc:
        inner = "" if exc.path == "(top level)" else f".{exc.path}"
        raise _fail(source, line, f"{path}{inner}", exc.what) from None


def _typed_list(
    raw: object, table: str, types: Mapping[str, type[Any]], lines: _Lines, source: str
) -> Iterator[tuple[Any, int | None]]:
    if not isinstance(raw, list):
        raise _fail(source, lines.header(table), table, f"must be [[{table}]] entries")
    for i, item in enumerate(raw):
        line = lines.header(table, i)
        path = f"{table}[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, line, path, "must be a table")
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in types:
            raise _fail(source, line, f"{path}.type", f"expected one of {', '.join(types)}, got {json.dumps(kind)}")
        body = {k: v for k, v in item.items() if k != "type"}
        yield _structure(body, types[kind], source, line, path), line


def _merge(into: dict[str, Any], key: str, value: Any) -> None:
    """Dotted keys and nested tables both allowed in `[config]`; tables merge, values replace."""
    head, _, rest = key.partition(".")
    if rest:
        child = into.setdefault(head, {})
        if not isinstance(child, dict):
            raise ConfigError(head, "is not a table; cannot set a key inside it")
        _merge(child, rest, value)
    elif isinstance(value, dict) and isinstance(into.get(head), dict):
        for k, v in value.items():
            _merge(into[head], k, v)
    else:
        into[head] = value


def _fake_account_url(channel: str) -> str:
    # Never dialled: the scenario's channels are in-process fakes.
    return f"http://{channel}.fake.invalid"


def _config(raw: object, channels: dict[str, ChannelSpec], lines: _Lines, source: str) -> cfg.Config:
    if not isinstance(raw, dict):
        raise _fail(source, lines.header("config"), "config", "must be a table")
    merged: dict[str, Any] = {}
    try:
        for name, spec in channels.items():
            accounts = {a: {"baseUrl": _fake_account_url(name)} for a in spec.accounts}
            if name != "console":
                merged.setdefault("channels", {})[name] = {"accounts": accounts}
        for key, value in raw.items():
            _merge(merged, key, value)
        return cfg.parse(merged)
    except ConfigError as exc:
        raise _fail(source, lines.header("config"), f"config.{exc.path}", exc.what) from None


def _check_action(action: Action, line: int | None, source: str, path: str) -> None:
    if action.at < 0:
        raise _fail(source, line, f"{path}.at", "must be zero or more seconds")
    if isinstance(action, (StartSession, InjectDeliveries)) and action.count < 1:
        raise _fail(source, line, f"{path}.count", "must be at least 1")
    timeout = getattr(action, "timeout_seconds", None)
    if timeout is not None and not timeout > 0:
        raise _fail(source, line, f"{path}.timeoutSeconds", "must be a positive number")


def parse_text(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and check a scenario file; raises `ScenarioError` naming the line and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    lines = _Lines(text)
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise _fail(source, lines.header(unknown[0]), unknown[0], f"unknown table; known: {', '.join(_TOP_KEYS)}")
    meta = _structure(raw.get("scenario", {}), ScenarioMeta, source, lines.header("scenario"), "scenario")
    model = _structure(raw.get("model", {}), ModelSpec, source, lines.header("model"), "model")
    channels = _channels(raw.get("channels", {}), lines, source)
    config = _config(raw.get("config", {}), channels, lines, source)
    actions: list[Action] = []
    for i, (action, line) in enumerate(_typed_list(raw.get("action", []), "action", ACTION_TYPES, lines, source)):
        _check_action(action, line, source, f"action[{i}]")
        actions.append(action)
    expects = [e for e, _ in _typed_list(raw.get("expect", []), "expect", EXPECT_TYPES, lines, source)]
    if meta.duration_seconds <= 0:
        raise _fail(source, lines.header("scenario"), "scenario.durationSeconds", "must be a positive number")
    return Scenario(meta, config, model, channels, sorted(actions, key=lambda a: a.at), expects, source)


def _channels(raw: object, lines: _Lines, source: str) -> dict[str, ChannelSpec]:
    if not isinstance(raw, dict):
        raise _fail(source, lines.header("channels"), "channels", "must be a table of [channels.NAME]")
    out: dict[str, ChannelSpec] = {}
    for name, body in raw.items():
        line = lines.header(f"channels.{name}") or lines.header(f'channels."{name}"')
        if name not in cfg.KNOWN_CHANNELS:
            raise _fail(source, line, f"channels.{name}", f"unknown channel; known: {', '.join(cfg.KNOWN_CHANNELS)}")
        out[name] = _structure(body, ChannelSpec, source, line, f"channels.{name}")
    return out


def load(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_text(text, str(path))


# --- the fakes ------------------------------------------------------------------------------


@attrs.define
class ScenarioModel:
    """The fake model upstream: `ScriptedModel` plus a default behaviour and a kill switch."""

    spec: ModelSpec = ModelSpec()
    scripted: ScriptedModel = attrs.Factory(ScriptedModel)
    _killed: trio.Event | None = None

    @property
    def calls(self) -> int:
        return self.scripted.calls

    def kill_upstream(self) -> None:
        """Drop every connection now; calls made after this connect afresh."""
        if self._killed is not None:
            self._killed.set()
        self._killed = None

    def _kill_event(self) -> trio.Event:
        if self._killed is None:
            self._killed = trio.Event()
        return self._killed

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], unit: WorkUnit) -> ModelReply:
        async with move_on_when(self._kill_event().wait):
            return await self._answer(messages, tools, unit)
        raise ModelCallError("upstream connection reset (the model server went away)")

    async def _answer(self, messages: list[Message], tools: list[dict[str, Any]], unit: WorkUnit) -> ModelReply:
        if self.spec.delay_seconds > 0:
            await trio.sleep(self.spec.delay_seconds)
        last = messages[-1]
        directive = last["role"] == "user" and str(last.get("content") or "").startswith("/")
        if not directive and last["role"] == "user" and self.spec.behaviour == "stall":
            self.scripted.calls += 1
            await trio.sleep_forever()
        if not directive and last["role"] == "user" and self.spec.behaviour == "fail":
            self.scripted.calls += 1
            raise ModelCallError("HTTP 500 from upstream")
        return await self.scripted.complete(messages, tools, unit)

    async def aclose(self) -> None:
        # The upstream outlives a generation (it is a server): closing a client does not kill it.
        await trio.lowlevel.checkpoint()


@attrs.define
class FakeChannel:
    """One channel's adapter, answering per its spec. Deduplicates, as the real ones with an
    idempotency key do."""

    name: str
    owner: FakeChannels
    deduplicates: bool = True

    async def send(self, entry: DeliveryEntry) -> Outcome:
        spec = self.owner.spec(self.name)
        if spec.delay_seconds > 0:
            await trio.sleep(spec.delay_seconds)
        outcome = self.owner.answer(self.name)
        self.owner.record(entry, outcome)
        return outcome

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


@attrs.define
class FakeChannels:
    """Every channel's fake server: behaviour per channel (changeable mid-test), and a record
    of every request that reached it."""

    specs: dict[str, ChannelSpec] = attrs.Factory(dict)
    requests: list[ChannelRequest] = attrs.Factory(list)
    t0: float = 0.0
    _attempts: collections.Counter[str] = attrs.Factory(collections.Counter)
    _seen: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))

    def spec(self, channel: str) -> ChannelSpec:
        return self.specs.get(channel, ChannelSpec())

    def configure(self, channel: str, **fields: Any) -> None:
        """`fake_channels.configure("feishu", mode="fail", failTimes=2)` (camelCase, as in files)."""
        raw = {**cfg.unstructure(self.spec(channel)), **fields}
        self.specs[channel] = cfg.structure(raw, ChannelSpec)
        self._attempts[channel] = 0

    def answer(self, channel: str) -> Outcome:
        spec = self.spec(channel)
        self._attempts[channel] += 1
        if spec.mode == "reject":
            return Outcome("permanent", f"HTTP {spec.code} from {channel} (fake: rejected)", http_status=spec.code)
        if spec.mode == "fail" and (spec.fail_times is None or self._attempts[channel] <= spec.fail_times):
            return Outcome("retry", f"HTTP 503 from {channel} (fake: failing)", http_status=503)
        return OK

    def record(self, entry: DeliveryEntry, outcome: Outcome) -> None:
        at = trio.current_time() - self.t0
        self.requests.append(ChannelRequest(at, entry.channel, entry.to, entry.account_id, entry.kind, outcome.kind))
        self._seen.value = len(self.requests)

    async def wait_delivered(self, count: int = 1, channel: str | None = None) -> list[ChannelRequest]:
        """Until `count` deliveries were accepted (on `channel`): the worker sends after the
        turn is over, so `gateway.busy` reaching 0 does not mean the reply arrived yet."""
        await self._seen.wait_value(lambda _: len(self.delivered(channel)) >= count)
        return self.delivered(channel)

    def get(self, channel: str, account_id: str | None) -> FakeChannel:
        return FakeChannel(channel, self)

    def delivered(self, channel: str | None = None) -> list[ChannelRequest]:
        return [r for r in self.requests if r.outcome == "ok" and (channel is None or r.channel == channel)]

    async def aclose(self) -> None:
        # Called at the end of every generation: the fake servers outlive it, as real ones do.
        await trio.lowlevel.checkpoint()


@attrs.define
class DeliveryWiring:
    """`GatewayDeps.delivery_factory` for runs on MockClock: the real queue and worker against
    the fake channels. One `DeliveryQueue` for the whole run (it knows its own live claims)."""

    channels: FakeChannels
    seed: int = 0
    queue: DeliveryQueue | None = None
    current: QueueDelivery | None = None

    async def __call__(self, config: cfg.Config, gateway: Gateway) -> QueueDelivery:
        await trio.lowlevel.checkpoint()
        if self.queue is None:
            self.queue = DeliveryQueue(gateway.deps.home.queue_dir, gateway.deps.runner, gateway.log)
        assert gateway.wall is not None
        rng = random.Random(self.seed + gateway.generation_number)
        self.current = QueueDelivery.build(
            self.queue, self.channels, config, gateway.wall, gateway.log, gateway.registry, rng
        )
        return self.current


@attrs.define
class Harness:
    """A whole gateway in-process with fakes for its upstreams; `serve` it in a nursery."""

    gateway: Gateway
    sink: MemorySink
    model: ScenarioModel
    channels: FakeChannels
    wiring: DeliveryWiring

    @classmethod
    def build(
        cls,
        home: Path,
        config: cfg.Config,
        *,
        model: ScenarioModel | None = None,
        channels: FakeChannels | None = None,
        seed: int = 0,
    ) -> Harness:
        the_model = model or ScenarioModel()
        the_channels = channels or FakeChannels()
        wiring = DeliveryWiring(the_channels, seed)
        gateway, sink = build_gateway(home, config, model=the_model, delivery_factory=wiring)
        return cls(gateway, sink, the_model, the_channels, wiring)

    @property
    def log(self) -> EventLog:
        return self.gateway.log

    async def dead_letters(self) -> list[DeliveryEntry]:
        return [] if self.wiring.queue is None else await self.wiring.queue.list_failed()

    async def pending(self) -> list[DeliveryEntry]:
        return [] if self.wiring.queue is None else await self.wiring.queue.list_pending()


# --- running --------------------------------------------------------------------------------


def _origin(channel: str, to: str, account: str | None) -> Origin:
    return Origin(channel, to, account)


@attrs.define
class Player:
    """Performs the actions at their virtual times against the running gateway."""

    harness: Harness
    t0: float
    restarts: list[RestartRecord] = attrs.Factory(list)

    @property
    def gateway(self) -> Gateway:
        return self.harness.gateway

    def note(self, message: str, **fields: Any) -> None:
        self.harness.log.info("SCENARIO", message, **fields)

    async def play(self, actions: list[Action], nursery: trio.Nursery) -> None:
        for action in actions:
            await trio.sleep_until(self.t0 + action.at)
            if self.gateway.state.value == "stopped":
                self.note(f"{_type_name(action)} skipped: the gateway has stopped")
                continue
            try:
                await self.perform(action, nursery)
            except GatewayError as exc:
                self.harness.log.warn("SCENARIO", f"{_type_name(action)} refused: {exc.name}: {exc}")

    async def perform(self, action: Action, nursery: trio.Nursery) -> None:
        match action:
            case StartSession():
                await self._start(action)
            case SpawnSubagent():
                task = f"/spawn {action.subagent or action.agent} {action.task}"
                origin = _origin(action.channel, action.to, action.account)
                sid, _ = await self.gateway.submit(agent_id=action.agent, origin=origin, prompt=task)
                self.note(f"spawn_subagent in session {sid}: {action.task}")
            case Restart() | ForceRestart():
                self._drain(action, nursery)
            case StallModelCall():
                sid, _ = await self.gateway.stall_model_call(None, action.seconds)
                self.note(f"stall_model_call: session {sid} stalls for {action.seconds:g}s")
            case KillUpstream():
                self.harness.model.kill_upstream()
                self.note("kill_upstream: model server connections dropped")
            case InjectDeliveries():
                await self._inject(action)

    async def _start(self, action: StartSession) -> None:
        refused = 0
        for i in range(action.count):
            origin = _origin(action.channel, action.to.replace("{i}", str(i)), action.account)
            try:
                await self.gateway.submit(
                    agent_id=action.agent, origin=origin, prompt=action.prompt.replace("{i}", str(i))
                )
            except GatewayError:
                refused += 1
        self.note(
            f"start_session x{action.count} on {action.channel}: {action.prompt[:60]}",
            **({"refused": refused} if refused else {}),
        )

    async def _inject(self, action: InjectDeliveries) -> None:
        delivery = self.harness.wiring.current
        assert delivery is not None
        for _ in range(action.count):
            await delivery.outbox.submit_manual(action.channel, action.to, action.account, action.agent, action.text)
        self.note(f"inject_deliveries x{action.count} to {action.channel}:{action.to}")

    def _drain(self, action: Restart | ForceRestart, nursery: trio.Nursery) -> None:
        kind: Literal["restart", "stop"] = "stop" if isinstance(action, Stop) else "restart"
        force = isinstance(action, ForceRestart) or (isinstance(action, Restart) and action.force)
        timeout = action.timeout_seconds if isinstance(action, Restart) else None
        record = RestartRecord(kind, force, trio.current_time() - self.t0)
        self.restarts.append(record)
        self.note(
            f"{kind} requested" + (" (force)" if force else ""),
            **({} if timeout is None else {"timeoutSeconds": timeout}),
        )
        request = self.gateway.request_drain(kind, force=force, timeout=timeout)

        async def watch() -> None:
            await request.done.wait()
            record.done_at = trio.current_time() - self.t0
            record.generation = request.new_generation

        nursery.start_soon(watch)


def _type_name(action: Action) -> str:
    return next((name for name, cls in ACTION_TYPES.items() if type(action) is cls), type(action).__name__)


# --- the timeline ---------------------------------------------------------------------------


@attrs.frozen
class TimelineEntry:
    at: float
    level: str
    tag: str
    message: str
    repeated: int = 0  # further events just like this one, folded in
    until: float | None = None

    def line(self) -> str:
        tag = f"[{self.tag}] " if self.tag else ""
        text = f"{self.at:10.3f}s  {self.level:<5} {tag}{self.message}"
        if self.repeated:
            text += f"   (+{self.repeated} more like this until {self.until:.3f}s)"
        return text


_NUMBERS = re.compile(r"\S*\d\S*")


def _shape(event: Event) -> tuple[str, str]:
    return event.tag, _NUMBERS.sub("#", event.message)


def _describe_event(event: Event) -> str:
    kv = " ".join(f"{k}={v}" for k, v in event.fields.items() if k not in ("blockers",))
    return f"{event.message} {kv}".strip()[:240]


def timeline(events: list[Event], t0: float, *, keep: int = 3) -> list[TimelineEntry]:
    """Events in virtual seconds. Within a stretch of repeating events (a retry storm, 10,000
    sessions starting) each shape, numbers aside, shows its first `keep` events and folds the
    rest into a count on the last one shown. An event with a tag not seen in the stretch (a
    drain starting amid a retry storm) starts a new stretch."""
    out: list[TimelineEntry] = []
    seen: dict[tuple[str, str], int] = {}  # shape -> index in `out` of its last shown event
    shown: collections.Counter[tuple[str, str]] = collections.Counter()
    for event in events:
        at = round((event.clock if event.clock is not None else t0) - t0, 6)
        shape = _shape(event)
        if shape not in seen and event.tag not in {tag for tag, _ in seen}:
            seen.clear()
            shown.clear()
        if shown[shape] < keep:
            shown[shape] += 1
            seen[shape] = len(out)
            out.append(TimelineEntry(at, event.level, event.tag, _describe_event(event)))
        else:
            i = seen[shape]
            out[i] = attrs.evolve(out[i], repeated=out[i].repeated + 1, until=at)
    return out


# --- results --------------------------------------------------------------------------------


@attrs.frozen
class ExpectResult:
    expect: str
    passed: bool
    detail: str


@attrs.frozen
class ScenarioResult:
    name: str
    source: str
    passed: bool
    expectations: list[ExpectResult]
    timeline: list[TimelineEntry]
    summary: dict[str, Any]
    wall_seconds: float
    virtual_seconds: float

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = cfg.unstructure(self)
        return data

    def failures(self) -> list[ExpectResult]:
        return [e for e in self.expectations if not e.passed]


def _summary(harness: Harness, obs: Observation, pending: int) -> dict[str, Any]:
    per_channel: dict[str, dict[str, int]] = collections.defaultdict(collections.Counter)
    for r in obs.requests:
        per_channel[r.channel][r.outcome] += 1
    return {
        "generation": obs.generation,
        "sessions": len(harness.gateway.sessions),
        "modelCalls": harness.model.calls,
        "drains": [
            {
                "kind": d.kind,
                "forced": d.forced,
                "timedOut": d.timed_out,
                "timeoutSeconds": d.timeout_seconds,
                "waitedSeconds": round(d.waited_seconds, 3),
                "abortedTasks": d.aborted_tasks,
            }
            for d in obs.drains
        ],
        "restarts": [cfg.unstructure(r) for r in obs.restarts],
        "stallsDetected": sum(1 for e in obs.events if e.tag == "STALLED SESSION DETECTED"),
        "channelRequests": {c: dict(v) for c, v in sorted(per_channel.items())},
        "deliveriesPending": pending,
        "deadLetters": len(obs.dead_letters),
    }


async def run_async(scenario: Scenario, home: Path) -> ScenarioResult:
    """Run inside trio (on a MockClock: the caller's `trio.run` or pytest's `autojump_clock`)."""
    wall = time.perf_counter()
    harness = Harness.build(
        home, scenario.config, model=ScenarioModel(scenario.model), channels=FakeChannels(dict(scenario.channels)),
        seed=scenario.meta.seed,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(harness.gateway.serve)
        t0 = trio.current_time()
        harness.channels.t0 = t0
        player = Player(harness, t0)
        player.note(f"scenario {scenario.meta.name or scenario.source}: generation 1 accepting work")
        nursery.start_soon(player.play, scenario.actions, nursery)
        with trio.move_on_at(t0 + scenario.meta.duration_seconds):
            await harness.gateway.state.wait_value("stopped")
        end = trio.current_time()
        player.note(f"scenario ends at {end - t0:g}s (state={harness.gateway.state.value})")
        nursery.cancel_scope.cancel()
    obs = Observation(
        events=list(harness.sink.events),
        t0=t0,
        requests=list(harness.channels.requests),
        dead_letters=await harness.dead_letters(),
        restarts=player.restarts,
        drains=list(harness.gateway.drains),
        generation=harness.gateway.generation_number,
    )
    results = [ExpectResult(e.describe(), *e.check(obs)) for e in scenario.expects]
    return ScenarioResult(
        name=scenario.meta.name or Path(scenario.source).stem,
        source=scenario.source,
        passed=all(r.passed for r in results),
        expectations=results,
        timeline=timeline(obs.events, t0),
        summary=_summary(harness, obs, len(await harness.pending())),
        wall_seconds=round(time.perf_counter() - wall, 4),
        virtual_seconds=round(end - t0, 6),
    )


def _scratch_dir() -> str | None:
    # The stores fsync every write; on tmpfs that costs nothing, and a rehearsal's home is
    # thrown away anyway. Elsewhere, the system's temporary directory.
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None


def run(scenario: Scenario, *, scratch: str | None = None) -> ScenarioResult:
    """Run on a fresh MockClock in a temporary home; returns when the scenario's time is up."""
    with tempfile.TemporaryDirectory(prefix="trio-gateway-scenario-", dir=scratch or _scratch_dir()) as tmp:
        clock = trio.testing.MockClock(autojump_threshold=0)
        result: ScenarioResult = trio.run(run_async, scenario, Path(tmp), clock=clock)
        return result


# --- printing -------------------------------------------------------------------------------


def render(result: ScenarioResult) -> str:
    lines = [f"scenario {result.name} ({result.source})", "", "timeline (virtual seconds):"]
    lines += ["  " + e.line() for e in result.timeline]
    s = result.summary
    lines += [
        "",
        "summary:",
        f"  generation {s['generation']}, {s['sessions']} session(s), {s['modelCalls']} model call(s), "
        f"{s['stallsDetected']} stall(s) detected",
    ]
    for d in s["drains"]:
        how = "timed out" if d["timedOut"] else "cleared"
        lines.append(
            f"  drain: {d['kind']}{' (forced)' if d['forced'] else ''} {how} after {d['waitedSeconds']:g}s "
            f"(timeout {d['timeoutSeconds']:g}s), aborted {d['abortedTasks']} task(s)"
        )
    for channel, counts in s["channelRequests"].items():
        lines.append(f"  channel {channel}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines.append(f"  deliveries pending {s['deliveriesPending']}, dead letters {s['deadLetters']}")
    lines.append(f"  ran {result.virtual_seconds:g} virtual s in {result.wall_seconds * 1000:.0f} ms wall")
    lines += ["", "expectations:"]
    lines += [f"  {'PASS' if e.passed else 'FAIL'}  {e.expect}: {e.detail}" for e in result.expectations]
    failed = result.failures()
    lines += ["", f"{len(failed)} expectation(s) failed" if failed else "all expectations passed"]
    return "\n".join(lines)


def describe_file(path: Path) -> str:
    """The first line of a scenario file's leading comment: what incident it rehearses."""
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except OSError:
        return ""
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
