"""A whole gateway in-process on a virtual clock, for scenarios and the pytest fixtures (SPEC 9, 10).

Only the two upstreams are fake. Deliveries go through the production wiring
(`assemble.queue_delivery`: the on-disk queue, the worker, the real channel adapters and their
per-channel error classification) over `FakeChannels().transport()`, the HTTP-level fake that
speaks every platform's send API. `console` writes `logs/console.jsonl` as in production.

The built-in `default` model (and any `echo` one) stays a `Model` stub (`HarnessModel`), not
`FakeModel` behind `OpenAIModel`: its directives (`/slow EVERY TOTAL` progress without chunks,
`/spawn`, a kill switch) are what scenarios are written in, and 10,000 sessions through an HTTP
client would cost seconds of wall. A model entry naming a provider with a fake
(`sim/fake_models.py`: `openai`, `anthropic`) is the real client over that fake, in-process.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
from trio_util import AsyncValue, move_on_when

from trio_gateway.app.assemble import listeners, queue_delivery
from trio_gateway.channels.base import Channel, Outcome, ShowsTyping
from trio_gateway.delivery.service import ClosableChannels, QueueDelivery
from trio_gateway.errors import ModelCallError
from trio_gateway.log import EventLog, FileSink, MemorySink
from trio_gateway.models import build_model
from trio_gateway.models.base import Message, Model, ModelReply, Progress
from trio_gateway.policy import config as cfg
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.runtime.deps import DeliveryFactory
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_channels import Delivered, FakeChannels, platform_fake
from trio_gateway.sim.fake_mcp import FakeMcpServers, in_process_tools
from trio_gateway.sim.fake_model import Mode
from trio_gateway.sim.fake_models import FakeModels, fake_keys
from trio_gateway.sim.faults import FaultKit, Faults, FaultSwitch, faulty_opener, faulty_runner
from trio_gateway.sim.runtime import ScriptedModel, gateway_deps
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.home import Home
from trio_gateway.storage.queue import DeliveryQueue

# Never dialled: every account's client goes through the in-process fake transport.
FAKE_BASE_URL = "http://channels.fake.invalid"

# --- the model upstream -----------------------------------------------------------------------

ModelBehaviour = Literal["echo", "stall", "fail"]


@attrs.frozen
class ModelSpec:
    """Every call answers after `delaySeconds` (no progress meanwhile, like a non-streaming
    call), per `behaviour`. Prompt directives (`/stall`, `/slow N T`, `/spawn A T`, `/fail`) win."""

    behaviour: ModelBehaviour = "echo"
    delay_seconds: float = 0.0
    # The provider fakes' behaviour by model name (`fake_model.Mode`): `{ claude = "pings" }`.
    upstreams: dict[str, Mode] = attrs.Factory(dict)


@attrs.define
class HarnessModel:
    """The fake model upstream: `ScriptedModel` plus a default behaviour and a kill switch."""

    spec: ModelSpec = ModelSpec()
    scripted: ScriptedModel = attrs.Factory(ScriptedModel)
    # `[faults] modelCall = "hang"`: every call waits here while the fault lasts.
    fault: FaultSwitch = attrs.Factory(lambda: FaultSwitch(None))
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

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        async with move_on_when(self._kill_event().wait):
            return await self._answer(messages, tools, progress)
        raise ModelCallError("upstream connection reset (the model server went away)")

    async def _answer(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        await self.fault.hold()
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
        return await self.scripted.complete(messages, tools, progress)

    async def aclose(self) -> None:
        # The upstream outlives a generation (it is a server): closing a client does not kill it.
        await trio.lowlevel.checkpoint()


# --- what the worker's sends came to ----------------------------------------------------------


@attrs.frozen
class Attempt:
    """One send by the delivery worker through a real adapter, and the adapter's verdict."""

    at: float  # trio time the answer came back
    channel: str
    to: str
    account_id: str | None
    kind: str
    outcome: str  # the classified `Outcome.kind`: ok, retry, permanent, rate_limited, paused
    reason: str
    text: str = ""
    # The requester origin's reply context (WeChat `context_token`), as the entry carried it.
    context_token: str | None = None


@attrs.define
class DeliveryTap:
    """Records every attempt with the delivery's kind, which no channel's wire carries."""

    attempts: list[Attempt] = attrs.Factory(list)
    _count: AsyncValue[int] = attrs.Factory(lambda: AsyncValue(0))

    def record(self, entry: DeliveryEntry, outcome: Outcome) -> None:
        origin = entry.requester_origin
        self.attempts.append(
            Attempt(trio.current_time(), entry.channel, entry.to, entry.account_id, entry.kind, outcome.kind,
                    outcome.reason, entry.payload.text, origin.context_token if origin else None)
        )  # fmt: skip
        self._count.value = len(self.attempts)

    def delivered(self, channel: str | None = None) -> list[Attempt]:
        return [a for a in self.attempts if a.outcome == "ok" and (channel is None or a.channel == channel)]

    async def wait_delivered(self, count: int = 1, channel: str | None = None) -> list[Attempt]:
        """Until `count` sends were accepted (on `channel`): the worker sends after the turn is
        over, so `gateway.busy` reaching 0 does not mean the reply arrived yet."""
        await self._count.wait_value(lambda _: len(self.delivered(channel)) >= count)
        return self.delivered(channel)

    async def wait_attempts(self, count: int) -> list[Attempt]:
        """Until `count` sends were made, whatever the channel answered."""
        await self._count.wait_value(lambda n: n >= count)
        return self.attempts


@attrs.define
class TappedChannel:
    inner: Channel
    tap: DeliveryTap
    name: str
    deduplicates: bool
    fault: FaultSwitch

    @classmethod
    def around(cls, inner: Channel, tap: DeliveryTap, fault: FaultSwitch) -> TappedChannel:
        return cls(inner, tap, inner.name, inner.deduplicates, fault)

    async def send(self, entry: DeliveryEntry) -> Outcome:
        await self.fault.hold()  # `[faults] channelSend = "hang"`
        outcome = await self.inner.send(entry)
        self.tap.record(entry, outcome)
        return outcome

    async def show_typing(self, to: str, context_token: str | None) -> None:
        """Passed through untapped: a typing call is no delivery (asked only where the kind has one)."""
        if isinstance(self.inner, ShowsTyping):
            await self.inner.show_typing(to, context_token)

    async def aclose(self) -> None:
        await self.inner.aclose()


@attrs.define
class TappedChannels:
    """The worker's view of a generation's channels (`queue_delivery(around=...)`): each
    adapter behind the `channelSend` fault switch, its verdict recorded with the entry's kind."""

    inner: ClosableChannels
    tap: DeliveryTap
    fault: FaultSwitch

    def get(self, channel: str, account_id: str | None) -> Channel | None:
        found = self.inner.get(channel, account_id)
        return None if found is None else TappedChannel.around(found, self.tap, self.fault)

    async def aclose(self) -> None:
        await self.inner.aclose()


# --- credentials --------------------------------------------------------------------------------


def _model_factory(
    config: cfg.Config, stub: HarnessModel, fakes: FakeModels, env: Mapping[str, str]
) -> Callable[[cfg.ModelConfig], Model]:
    """Each model entry's client: the real one over its provider's fake, else the stub."""

    def open_model(model: cfg.ModelConfig) -> Model:
        fake = fakes.for_entry(config, model)
        if fake is None:
            return stub
        return build_model(model, {**fake_keys(config), **env}, fake.transport())

    return open_model


def fake_env(config: cfg.Config) -> dict[str, str]:
    """A value for every secret the config's accounts name, so the real adapters open."""
    env: dict[str, str] = {}
    for channel, section in config.channels.items():
        for account in section.accounts.values():
            # The secrets an adapter opens with, as each kind's account names them (if it has the key).
            for key in ("app_secret_env", "token_env", "app_token_env"):
                name = getattr(account, key, None)
                if isinstance(name, str) and name:
                    env[name] = f"fake-{channel}-secret"
    return env


def fake_account(channel: str) -> dict[str, str]:
    """An account's config for the fake: every key the channel's adapter requires, as its
    platform's fake (`sim/fake_<platform>.py`) names them."""
    env_prefix = "FAKE_" + channel.upper().replace("-", "_")
    # Anyone may talk to a fake's bot (SPEC 15's default is `pairing`): a scenario is about
    # something else; one about access says so in its own config.
    return {"baseUrl": FAKE_BASE_URL, "dmPolicy": "open", **platform_fake(channel).account_keys(env_prefix)}


def _tapped_delivery(
    home: Home,
    log: EventLog,
    env: Mapping[str, str],
    kit: FaultKit,
    channels: FakeChannels,
    tap: DeliveryTap,
    seed: int,
) -> DeliveryFactory:
    """Production's delivery wiring (`queue_delivery`: the queue, the worker, the real
    adapters) over the fake platforms, with the fault switches in front of the queue disk, the
    console file and each send; only the worker's lookup is wrapped, to record each verdict."""
    return queue_delivery(
        home,
        log,
        env,
        faulty_runner(inline, kit.switch("queue_disk")),
        transport=channels.transport(),
        rng=random.Random(seed),
        console_runner=faulty_runner(inline, kit.switch("console_file")),
        around=lambda adapters: TappedChannels(adapters, tap, kit.switch("channel_send")),
    )


# --- the harness ------------------------------------------------------------------------------


@attrs.define
class Harness:
    """A whole gateway in-process with fakes for its upstreams; `serve` it in a nursery."""

    gateway: Gateway
    sink: MemorySink
    model: HarnessModel
    channels: FakeChannels
    tap: DeliveryTap
    home: Home
    # The `[faults]` of this run: switches in front of each subsystem, armed by `faults.run`
    # (a scenario) or by hand (a test).
    faults: FaultKit = attrs.Factory(lambda: FaultKit(Faults()))
    # The MCP servers a config names, served in-process (`mcp["files"].calls`, `.cancelled`).
    mcp: FakeMcpServers = attrs.Factory(FakeMcpServers)
    # The provider fakes behind the config's model entries (`models["claude"].requests`).
    models: FakeModels = attrs.Factory(FakeModels)

    @classmethod
    def build(
        cls,
        home: Path,
        config: cfg.Config,
        *,
        model: HarnessModel | None = None,
        channels: FakeChannels | None = None,
        env: Mapping[str, str] | None = None,
        seed: int = 0,
        faults: Faults | None = None,
        mcp: FakeMcpServers | None = None,
    ) -> Harness:
        kit = FaultKit(faults or Faults())
        the_home = Home(home).ensure()
        the_model = model or HarnessModel()
        the_model.fault = kit.switch("model_call")
        the_channels = channels or FakeChannels()
        the_mcp = mcp or FakeMcpServers()
        the_env = fake_env(config) if env is None else env
        fakes = FakeModels(the_model.spec.upstreams)
        tap = DeliveryTap()
        sink = MemorySink()
        log = EventLog([sink])
        if kit.faults.log_file is not None:
            log.sinks.append(FileSink(the_home.log_path, opener=faulty_opener(kit.switch("log_file"))))
        deps = gateway_deps(
            home,
            config,
            log,
            model=the_model,
            session_runner=faulty_runner(inline, kit.switch("sessions_disk")),
            delivery_factory=_tapped_delivery(the_home, log, the_env, kit, the_channels, tap, seed),
            tools_factory=in_process_tools(the_mcp),
        )
        # The listeners are production's too, long-polling the same fake (SPEC 11), and ask
        # the one pairing book the approval surfaces change (SPEC 15).
        listening = listeners(
            the_home,
            log,
            the_env,
            inline,
            transport=the_channels.transport(),
            rng=random.Random(seed),
            connect=the_channels.connect_websocket,
            book=deps.pairing,
        )
        deps = attrs.evolve(
            deps, listener_factory=listening, model_factory=_model_factory(config, the_model, fakes, the_env)
        )
        return cls(Gateway(deps, config), sink, the_model, the_channels, tap, the_home, kit, the_mcp, fakes)

    @property
    def current(self) -> QueueDelivery | None:
        """This generation's delivery side, for actions that enqueue straight into it."""
        delivery = self.gateway.delivery
        return delivery if isinstance(delivery, QueueDelivery) else None

    @property
    def log(self) -> EventLog:
        return self.gateway.log

    def _queue(self) -> DeliveryQueue:
        # A reader of the same directory: listing claims nothing, so the worker's queue object
        # (which must know its own claims) is left alone.
        return DeliveryQueue(self.home.queue_dir, inline, self.log)

    async def dead_letters(self) -> list[DeliveryEntry]:
        return await self._queue().list_failed()

    async def pending(self) -> list[DeliveryEntry]:
        return await self._queue().list_pending()

    def console_messages(self) -> list[Delivered]:
        """What the `console` channel wrote to `logs/console.jsonl`, one entry per line."""
        try:
            lines = self.home.console_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        records = [json.loads(line) for line in lines if line.strip()]
        return [Delivered("console", r["to"], r["text"], r.get("idempotencyKey")) for r in records]

    def messages(self, channel: str | None = None) -> list[Delivered]:
        """What users would have seen: the fake servers' messages and the console file's lines."""
        seen = [*self.channels.delivered(), *self.console_messages()]
        return [m for m in seen if channel is None or m.channel == channel]

    async def wait_delivered(self, count: int = 1, channel: str | None = None) -> list[Attempt]:
        return await self.tap.wait_delivered(count, channel)
