"""Wiring: the real models, channels and delivery queue behind a `Gateway`.

The runtime takes its collaborators as factories (`GatewayDeps`) so tests and scenarios can
swap fakes in; this module is the one place that picks the production ones.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable, Mapping

from trio_gateway import upstream as http
from trio_gateway.channels import registry as channel_registry
from trio_gateway.channels.access import Access, Say
from trio_gateway.channels.cursors import Cursors, CursorStore
from trio_gateway.channels.heard import Submit
from trio_gateway.channels.inbound import WebSocketConnect, open_websocket
from trio_gateway.channels.listen import (
    AccountGate,
    InboundStats,
    ListenerSupervisor,
    NoSender,
    SenderControl,
)
from trio_gateway.channels.registry import ChannelSet, build_listeners
from trio_gateway.channels.rejected import RejectedStore
from trio_gateway.delivery.service import ClosableChannels, QueueDelivery
from trio_gateway.delivery.worker import DeliveryWorker, OutcomeTally
from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog
from trio_gateway.models import build_model
from trio_gateway.models.registry import load_config as load_config_file
from trio_gateway.policy.config import Config
from trio_gateway.policy.origin import Origin
from trio_gateway.policy.pairing import PairingBook
from trio_gateway.runtime.deps import (
    DeliveryFactory,
    DeliveryHost,
    DeliveryService,
    GatewayDeps,
    ListenerFactory,
    Server,
    ServiceOutbox,
    SessionStoreFactory,
    ToolsFactory,
)
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.runtime.usage import ModelLedger
from trio_gateway.storage.access import FileAccessBook
from trio_gateway.storage.atomic import BlockingRunner, in_thread
from trio_gateway.storage.disk import DiskRunners
from trio_gateway.storage.home import Home
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.storage.sessions import SessionStore
from trio_gateway.storage.usage_file import UsageFile, read_day
from trio_gateway.tools import registry as tool_registry
from trio_gateway.work.units import WorkRegistry


def queue_delivery(
    home: Home,
    log: EventLog,
    env: Mapping[str, str],
    runner: BlockingRunner,
    *,
    transport: http.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    console_runner: BlockingRunner = in_thread,
    around: Callable[[ClosableChannels], ClosableChannels] = lambda channels: channels,
) -> DeliveryFactory:
    """Per generation: the channels of that generation's config and a worker over the ONE
    queue object of this process (its claims must be known to its own `recover()`).
    `around` wraps the channels the worker sends through (the in-process kit records each
    verdict there); closing goes through it too."""
    queue = DeliveryQueue(home.queue_dir, runner, log)
    outcomes = OutcomeTally()  # like the queue, one per process: counters survive restarts

    async def factory(config: Config, gateway: DeliveryHost) -> QueueDelivery:
        assert gateway.wall is not None
        channels = around(ChannelSet.build(config, home, env, transport, console_runner))
        return QueueDelivery.build(
            queue, channels, config, gateway.wall, log, gateway.registry, rng, gateway.storage, outcomes
        )

    return factory


def listeners(
    home: Home,
    log: EventLog,
    env: Mapping[str, str],
    runner: BlockingRunner,
    *,
    transport: http.AsyncBaseTransport | None = None,
    rng: random.Random | None = None,
    connect: WebSocketConnect = open_websocket,
    gate: AccountGate | None = None,
    cursors: Cursors | None = None,
    book: PairingBook | None = None,
) -> ListenerFactory:
    """Per generation: a listener for every account of that generation's config (SPEC 11),
    each message checked by the one `Access` of the process (SPEC 15), which the webhook
    route reaches through the supervisor. `book`: the pairing book (default: files under
    `access/`)."""
    if cursors is None:
        cursors = CursorStore(home.inbound_dir, runner, log)
    stats = InboundStats()
    access = Access(book if book is not None else file_book(home, runner, log), log, _utc_now)

    async def factory(config: Config, submit: Submit, delivery: DeliveryService) -> ListenerSupervisor:
        # Files or cluster (PgDelivery's worker is a DeliveryWorker too): an auth pause stops sends.
        worker = getattr(delivery, "worker", None)
        sender: SenderControl = worker if isinstance(worker, DeliveryWorker) else NoSender()
        access.say = replies_through(delivery.outbox)
        return ListenerSupervisor(
            build_listeners(config, env, log, transport, connect),
            submit,
            cursors,
            log,
            config.gateway.channel_stop_timeout_seconds,
            sender,
            rng or random.Random(),
            stats,
            gate,
            RejectedStore(home.inbound_dir, runner, log),
            access,
        )

    return factory


def replies_through(outbox: ServiceOutbox) -> Say:
    """The access check's one reply (a pairing code, the media notice): a durable delivery
    through the generation's outbox, like any reply, sent back to where the message came from."""

    async def say(agent_id: str, origin: Origin, text: str, key: str) -> object:
        return await outbox.submit(kind="reply", origin=origin, agent_id=agent_id, text=text, idempotency_key=key)

    return say


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _production_tools(home: Home, log: EventLog, env: Mapping[str, str]) -> ToolsFactory:
    """Per generation: real stdio processes (stderr to logs/mcp-NAME.stderr.log) and HTTP."""
    openers = tool_registry.production_openers(env, str(home.logs_dir))

    def factory(config: Config, registry: WorkRegistry, log: EventLog) -> tool_registry.ToolBox:
        return tool_registry.build_toolbox(config, registry, log, openers)

    return factory


def file_book(home: Home, runner: BlockingRunner, log: EventLog) -> PairingBook:
    """The process's pairing book on files: `access/<channel>/<accountId>.json` (SPEC 15)."""
    return FileAccessBook(home.access_dir, runner, log)


def file_sessions(home: Home, runner: BlockingRunner, log: EventLog) -> SessionStoreFactory:
    """Sessions as files under the home (no other node can take one over)."""
    return lambda _on_lost: SessionStore(home.sessions_dir, runner, log)


def load_config_from(home: Home) -> Callable[[], Config]:
    """The gateway's reader of `gateway.json`, run at start and at every restart."""
    return lambda: load_config_file(home.config_path)


def production_gateway(
    home: Home,
    config: Config,
    log: EventLog,
    env: Mapping[str, str],
    *,
    disks: DiskRunners,
    servers: list[Server] | None = None,
    runner: BlockingRunner = in_thread,
    inline_database: bool = False,
) -> Gateway:
    """`disks`: a runner per disk subsystem (`DiskRunners.threads()`: one abandonable thread
    pool each, so a stuck directory starves only itself); `runner`: other blocking work;
    `inline_database`: cluster mode's database calls without threads (a MockClock run)."""
    preflight(config, env)
    home.ensure()
    # Approvals and pairing codes (SPEC 15), one book for the process's life: the access
    # check asks it, the approval surfaces change it.
    book = file_book(home, disks.access, log)
    deps = GatewayDeps(
        home=home,
        log=log,
        load_config=load_config_from(home),
        model_factory=lambda model_config: build_model(model_config, env),
        delivery_factory=queue_delivery(home, log, env, disks.queue, console_runner=disks.console),
        listener_factory=listeners(home, log, env, disks.cursors, book=book),
        runner=runner,
        # Production abandons a cancelled session write's thread (its own disk runner).
        session_store=file_sessions(home, disks.sessions, log),
        servers=servers or [],
        preflight=lambda new_config: preflight(new_config, env),
        tools_factory=_production_tools(home, log, env),
        model_ledger=_model_ledger(home, runner, log),
        pairing=book,
    )
    deps.wall_base = _skewed_wall(config, env)
    if config.cluster.backend == "postgres":
        # Imported here: a gateway on files never loads psycopg.
        from trio_gateway.app import cluster as wiring

        node, deps.delivery_factory = wiring.cluster_parts(
            home, config, log, env, inline=inline_database, console_runner=disks.console
        )
        # The node joins before generation 1 and leaves after the last (the root nursery).
        deps.servers = [node.serve, *deps.servers]
        deps.describe_storage = node.describe
        deps.cluster_status = node.status
        deps.session_store = wiring.session_store_for(node)
        deps.session_id_prefix = wiring.session_id_prefix()
        # Approvals and codes in the database: one approval counts on every node at once.
        deps.pairing = wiring.pairing_book(node)
        # One node at a time listens to an account (SPEC 12): under a lease per account.
        # Cursors live in the database, so the node that takes an account over goes on from there.
        deps.listener_factory = listeners(
            home,
            log,
            env,
            runner,
            gate=wiring.inbound_gate(node, config),
            cursors=wiring.inbound_cursors(node),
            book=deps.pairing,
        )
    return Gateway(deps, config)


# A test seam (honoured only with `gateway.testEndpoints.enabled`): this process's wall clock
# runs this many seconds off, as a badly synchronised machine's would. Cluster mode must not
# care (SPEC 12: leases and deaths are judged on the database's clock).
CLOCK_SKEW_ENV = "TRIO_GATEWAY_TEST_CLOCK_SKEW_SECONDS"


def _skewed_wall(config: Config, env: Mapping[str, str]) -> dt.datetime | None:
    skew = env.get(CLOCK_SKEW_ENV)
    if not skew or not config.gateway.test_endpoints.enabled:
        return None
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=float(skew))


def _model_ledger(home: Home, runner: BlockingRunner, log: EventLog) -> ModelLedger:
    """Tokens and cool-downs for the process's life, starting from the day's spend a previous
    process saved in `usage.json` (so `maxTokensPerDay` holds across a restart)."""
    today = dt.datetime.now(dt.UTC).date()
    usage = UsageFile(home.usage_path, runner, log)
    return ModelLedger.resumed(today, read_day(home.usage_path, today, log), usage.save)


def preflight(config: Config, env: Mapping[str, str]) -> None:
    """Everything a config needs from the environment, checked before anything starts: a bad
    config never half-starts a gateway (ConfigError, exit 2)."""
    channel_registry.check(config, env)
    if config.cluster.backend == "postgres" and not env.get(config.cluster.dsn_env):
        raise ConfigError("cluster.dsnEnv", f"environment variable {config.cluster.dsn_env} is not set")
    tool_registry.check_env(config, env)
    for name, model in config.models.items():
        if model.api_key_env and not env.get(model.api_key_env):
            raise ConfigError(f"models.{name}.apiKeyEnv", f"environment variable {model.api_key_env} is not set")
