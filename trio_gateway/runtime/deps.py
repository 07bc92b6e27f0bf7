"""What a `Gateway` is built from: the seams tests and scenarios swap (`GatewayDeps`), and the
shapes of the parts built per generation (delivery side, listeners, tools, sessions, models).
`app/assemble.py` picks the production ones; `sim/` the fakes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from trio_gateway.channels.heard import Submit
from trio_gateway.channels.listen import ListenerSupervisor
from trio_gateway.log import EventLog
from trio_gateway.models.base import Model
from trio_gateway.policy.config import Config, ModelConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.policy.pairing import PairingBook
from trio_gateway.runtime.session import Outbox
from trio_gateway.runtime.usage import ModelLedger
from trio_gateway.storage.access import FileAccessBook
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.base import DeliveryStore, SessionStorage
from trio_gateway.storage.disk import StorageHealth
from trio_gateway.storage.home import Home
from trio_gateway.tools.registry import ToolBox
from trio_gateway.work.clock import WallClock
from trio_gateway.work.units import WorkRegistry


class ServiceOutbox(Outbox, Protocol):
    """A generation's outbox: turns' notices (routed), and an operator's deliveries."""

    async def submit_manual(
        self, channel: str, to: str, account_id: str | None, agent_id: str | None, text: str
    ) -> DeliveryEntry:
        """`delivery create` and `POST /v1/deliveries`: an explicit address, no routing."""
        ...


class DeliveryService(Protocol):
    """The delivery side of one generation: the outbox turns hand notices to, the worker, and
    the queue both use (what `GET /v1/deliveries` lists)."""

    @property
    def outbox(self) -> ServiceOutbox: ...

    @property
    def store(self) -> DeliveryStore: ...

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...

    def counts(self) -> dict[str, int]: ...

    async def aclose(self) -> None: ...


class DeliveryHost(Protocol):
    """What a generation's delivery side is built from (the `Gateway`, seen from there)."""

    @property
    def deps(self) -> GatewayDeps: ...

    @property
    def wall(self) -> WallClock | None: ...

    @property
    def registry(self) -> WorkRegistry: ...

    @property
    def storage(self) -> StorageHealth: ...

    @property
    def log(self) -> EventLog: ...


DeliveryFactory = Callable[[Config, DeliveryHost], Awaitable[DeliveryService]]
# The listeners of one generation (SPEC 11), given its delivery side (an auth failure pauses
# the account's sender too).
# Heard messages go to `submit` (the gateway's `submit_inbound`).
ListenerFactory = Callable[[Config, Submit, DeliveryService], Awaitable[ListenerSupervisor]]
# MCP servers and http_request per generation (SPEC 14): each call a unit in the registry.
ToolsFactory = Callable[[Config, WorkRegistry, EventLog], ToolBox]
# Where sessions live, given what to call when another node takes one over (cluster mode).
SessionStoreFactory = Callable[[Callable[[str], None]], SessionStorage]
ModelFactory = Callable[[ModelConfig], Model]
Server = Callable[..., Awaitable[None]]


@attrs.define
class GatewayDeps:
    """Everything the gateway gets from outside, so tests and scenarios swap fakes in."""

    home: Home
    log: EventLog
    load_config: Callable[[], Config]
    model_factory: ModelFactory
    delivery_factory: DeliveryFactory
    # Sessions on files under the home, or (cluster mode) in the database.
    session_store: SessionStoreFactory
    tools_factory: ToolsFactory
    # Checks a config against the environment (secrets present) without opening anything;
    # raises ConfigError. Run on every reload before the running config is let go.
    preflight: Callable[[Config], None] = lambda _config: None
    runner: BlockingRunner = in_thread
    wall_base: dt.datetime | None = None
    servers: list[Server] = attrs.Factory(list)
    # None: nothing listens (the in-process kit without channel fakes).
    listener_factory: ListenerFactory | None = None
    # Where state lives, for `gateway status` (cluster mode adds the node id).
    describe_storage: Callable[[], dict[str, Any]] = lambda: {"backend": "files"}
    # Cluster mode: new session ids that cannot collide with another node's.
    session_id_prefix: str = "s"
    # `GET /v1/cluster`: the nodes sharing the database (None: not in cluster mode).
    cluster_status: Callable[[], Awaitable[dict[str, Any]]] | None = None
    # Tokens, model call outcomes and cool-downs (SPEC 16): one for the gateway's life, handed
    # to every generation's runtime, so a restart neither forgets a cool-down nor a day's spend.
    model_ledger: ModelLedger = attrs.Factory(ModelLedger)
    # Who may talk to the agent (SPEC 15): approvals and pending pairing codes, for the access
    # check and the approval surfaces. Files under `access/` by default; the database in
    # cluster mode (app/assemble.py). One for the gateway's life: a restart keeps it.
    pairing: PairingBook = attrs.Factory(
        lambda self: FileAccessBook(self.home.access_dir, self.runner, self.log), takes_self=True
    )
