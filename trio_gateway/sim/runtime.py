"""In-process pieces for running a whole gateway on a virtual clock.

`RecordingDelivery` stands in for the delivery service when a test is about the runtime and
not the queue: it records every notice the outbox is handed, already routed. `ScriptedModel`
is a model whose behaviour per prompt is a small script (answer, stall, progress slowly).
`build_gateway` wires a `Gateway` with inline disk I/O, which MockClock runs need.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from trio_gateway.app.assemble import file_sessions
from trio_gateway.channels import registry
from trio_gateway.delivery.outbox import Outbox
from trio_gateway.errors import DeliveryValidationError, ModelCallError
from trio_gateway.log import EventLog, MemorySink
from trio_gateway.models.base import Message, Model, ModelReply, Progress, ToolCall
from trio_gateway.models.echo import offers_tool, parse_tool, tool_result_reply
from trio_gateway.policy import config as cfg
from trio_gateway.policy import config_keys
from trio_gateway.policy.entry import DeliveryEntry, DeliveryKind
from trio_gateway.policy.origin import Origin
from trio_gateway.policy.routing import resolve
from trio_gateway.runtime.deps import DeliveryFactory, DeliveryHost, GatewayDeps, ListenerFactory, Server, ToolsFactory
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_mcp import FakeMcpServers, in_process_tools
from trio_gateway.storage.atomic import BlockingRunner, inline
from trio_gateway.storage.base import DeliveryStore
from trio_gateway.storage.home import Home
from trio_gateway.storage.queue import DeliveryQueue


@attrs.frozen
class Notice:
    at: float
    kind: DeliveryKind
    channel: str
    to: str | None
    agent_id: str
    text: str
    origin: Origin | None


@attrs.define
class RecordingOutbox:
    config: cfg.Config
    notices: list[Notice]
    # An operator's deliveries (`POST /v1/deliveries`) are no turn's notices: they go to the
    # queue on disk through production's outbox, where `GET /v1/deliveries` lists them.
    manual: Outbox | None = None

    async def submit(
        self,
        *,
        kind: DeliveryKind,
        origin: Origin | None,
        agent_id: str,
        text: str,
        idempotency_key: str | None = None,
    ) -> Notice:
        await trio.lowlevel.checkpoint()
        route = resolve(origin, self.config.agents[agent_id])
        notice = Notice(trio.current_time(), kind, route.channel, route.to, agent_id, text, origin)
        self.notices.append(notice)
        return notice

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        if self.manual is None:
            raise DeliveryValidationError("this recording outbox was given no queue for manual deliveries")
        return await self.manual.submit_manual(channel, to, account_id, agent_id, text)


@attrs.define
class RecordingDelivery:
    outbox: RecordingOutbox
    # The queue on disk (nothing sends from it here): what the API lists and retries.
    store: DeliveryStore

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def counts(self) -> dict[str, int]:
        return {"pending": 0, "failed": 0}

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def recording_delivery(notices: list[Notice]) -> DeliveryFactory:
    async def factory(config: cfg.Config, gateway: DeliveryHost) -> RecordingDelivery:
        await trio.lowlevel.checkpoint()
        return recording(gateway, RecordingOutbox(config, notices))

    return factory


def recording(gateway: DeliveryHost, outbox: RecordingOutbox) -> RecordingDelivery:
    """A delivery side that records `outbox`'s notices, over the gateway's queue on disk."""
    assert gateway.wall is not None
    store = DeliveryQueue(gateway.deps.home.queue_dir, gateway.deps.runner, gateway.log)
    manual = Outbox(store, outbox.config.agents, gateway.wall, gateway.log)
    return RecordingDelivery(attrs.evolve(outbox, manual=manual), store)


@attrs.define
class ScriptedModel:
    """Echo by default; prompts starting with a directive change behaviour:

    - `/stall` never answers (no progress after `model_call:started`);
    - `/slow N T` streams: progress every N s for T s, then answers;
    - `/spawn AGENT TASK` asks for the `spawn_subagent` tool, then answers `spawned: ...`;
    - `/tool NAME JSON` asks for tool NAME with those arguments, then answers `tool NAME: ...`;
    - `/fail` raises a model error.
    """

    calls: int = 0
    closed: bool = False

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        self.calls += 1
        last = messages[-1]
        if last["role"] == "tool":
            return ModelReply(tool_result_reply(messages))
        text = str(last.get("content") or "")
        tool = parse_tool(text)
        if tool is not None and offers_tool(tools, tool[0]):
            await trio.lowlevel.checkpoint()
            return ModelReply(None, (ToolCall(f"call-{self.calls}", tool[0], tool[1]),))
        if text.startswith("/stall"):
            await trio.sleep_forever()
        if text.startswith("/slow "):
            _, every, total = text.split()[:3]
            end = trio.current_time() + float(total)
            while trio.current_time() < end:
                await trio.sleep(float(every))
                progress("model_call:streaming")
            return ModelReply(f"slow done: {text}")
        if text.startswith("/spawn ") and tools:
            _, agent_id, task = text.split(" ", 2)
            return ModelReply(
                None, (ToolCall(f"call-{self.calls}", "spawn_subagent", {"agent": agent_id, "task": task}),)
            )
        if text.startswith("/fail"):
            raise ModelCallError("HTTP 500 from upstream")
        await trio.lowlevel.checkpoint()
        progress("model_call:first_token")
        return ModelReply(f"echo: {text}")

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


def quick_config(**overrides: Any) -> cfg.Config:
    """Built-in defaults with dotted camelCase overrides: `quick_config(**{"gateway.drain.timeoutSeconds": 5})`."""
    raw: dict[str, Any] = {}
    for key, value in overrides.items():
        raw, _ = config_keys.set_key(raw, key, value, registry.account_kinds())
    return cfg.parse(raw, registry.account_kinds())


def build_gateway(home: Path, config: cfg.Config, **parts: Any) -> tuple[Gateway, MemorySink]:
    """A gateway on inline disk I/O, its log in memory; `parts` are `gateway_deps`'s."""
    sink = MemorySink()
    return Gateway(gateway_deps(home, config, EventLog([sink]), **parts), config), sink


def gateway_deps(
    home: Path,
    config: cfg.Config,
    log: EventLog,
    *,
    model: Model | None = None,
    delivery_factory: DeliveryFactory | None = None,
    notices: list[Notice] | None = None,
    servers: list[Server] | None = None,
    load_config: Callable[[], cfg.Config] | None = None,
    session_runner: BlockingRunner | None = None,
    tools_factory: ToolsFactory | None = None,
    listener_factory: ListenerFactory | None = None,
    **more: Any,
) -> GatewayDeps:
    """Everything an in-process gateway is built with; unnamed parts are the recording and
    scripted stand-ins."""
    the_model = model if model is not None else ScriptedModel()
    return GatewayDeps(
        home=Home(home).ensure(),
        log=log,
        load_config=load_config or (lambda: config),
        model_factory=lambda _mc: the_model,
        delivery_factory=delivery_factory or recording_delivery(notices if notices is not None else []),
        runner=inline,
        wall_base=dt.datetime(2026, 6, 15, 3, 21, tzinfo=dt.UTC),
        servers=servers or [],
        session_store=file_sessions(Home(home), session_runner or inline, log),
        tools_factory=tools_factory or in_process_tools(FakeMcpServers()),
        listener_factory=listener_factory,
        **more,  # any other `GatewayDeps` field as given (`preflight`, `describe_storage`, ...)
    )
