"""Wiring: the real models, channels and delivery queue behind a `Gateway`.

The runtime takes its collaborators as factories (`GatewayDeps`) so tests and scenarios can
swap fakes in; this module is the one place that picks the production ones.
"""

from __future__ import annotations

from collections.abc import Mapping

from trio_gateway.config import Config
from trio_gateway.gateway import Gateway, GatewayDeps, Server, load_config_from
from trio_gateway.home import Home
from trio_gateway.log import EventLog
from trio_gateway.store import BlockingRunner, in_thread
from trio_gateway.testing.runtime import ScriptedModel, recording_delivery


def production_gateway(
    home: Home,
    config: Config,
    log: EventLog,
    env: Mapping[str, str],
    *,
    servers: list[Server] | None = None,
    runner: BlockingRunner = in_thread,
) -> Gateway:
    # TEMPORARY until the model client and the delivery queue land: echo-ish model, notices
    # recorded in memory. Replaced by the real factories in the same function signature.
    deps = GatewayDeps(
        home=home.ensure(),
        log=log,
        load_config=load_config_from(home),
        model_factory=lambda _mc: ScriptedModel(),
        delivery_factory=recording_delivery([]),
        runner=runner,
        servers=servers or [],
    )
    return Gateway(deps, config)
