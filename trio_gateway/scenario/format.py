"""The scenario file's content, as values (SPEC 9): what to fake, what to do when, what must hold.

[scenario]   name, description, durationSeconds (virtual), seed
[config]     dotted camelCase overrides of gateway.json ("gateway.drain.timeoutSeconds" = 60)
[model]      the fake model: behaviour = echo | stall | fail, delaySeconds; upstreams = { <model
             name> = echo | stall | pings | overloaded | error_mid_stream | fail | slow | delay }
             for model entries whose provider has a fake (the real client over it)
[channels.C] a fake channel server: mode = accept | reject | fail | rate_limit, code, status,
             message, failTimes, retryAfterSeconds, delaySeconds, accounts
[[action]]   at = seconds, type = start_session | spawn_subagent | restart | force_restart | stop
             | stall_model_call | kill_upstream | inject_deliveries | inbound (channel, text, from)
             | drop_connection (channel)
[[expect]]   type = log | delivery | dead_letter | restart_within | no_request | generation | drains
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from trio_gateway.errors import GatewayError
from trio_gateway.policy import config as cfg
from trio_gateway.scenario.expect import Expectation
from trio_gateway.sim.faults import Faults
from trio_gateway.sim.harness import ModelSpec

if TYPE_CHECKING:
    from trio_gateway.sim.fake_channels import FakeChannels


class ScenarioError(GatewayError):
    """A scenario file that cannot be run: names the file, the line and the key."""

    exit_code = 2
    http_status = 400


@attrs.frozen
class ScenarioMeta:
    name: str = ""
    description: str = ""
    # How long (virtual seconds) the rehearsal watches after generation 1 accepts work.
    duration_seconds: float = 600.0
    seed: int = 0  # the delivery worker's backoff jitter: the same file gives the same timeline


ChannelMode = Literal["accept", "reject", "fail", "rate_limit"]


@attrs.frozen
class ChannelSpec:
    """How the channel's fake server answers sends (the real adapter classifies the answer).

    `reject`: the platform's own error form, `code` (Feishu 99992360, Discord 10003 ...) with
    HTTP `status` and `message`, each defaulting to the channel's usual "no such recipient".
    `fail`: a bare 5xx (`status`, default 503). `rate_limit`: a 429 asking for
    `retryAfterSeconds`. Each for the first `failTimes` sends (every send when omitted), then
    accept. `delaySeconds`: every answer comes that late."""

    mode: ChannelMode = "accept"
    code: int | None = None
    status: int | None = None
    message: str | None = None
    fail_times: int | None = None
    retry_after_seconds: float = 1.0
    delay_seconds: float = 0.0
    # Accounts written into the config when `[config]` does not configure this channel.
    accounts: list[str] = attrs.Factory(lambda: ["default"])

    def apply(self, fakes: FakeChannels, channel: str) -> None:
        """Give the fake server the commands that make it answer as this spec says."""
        if self.delay_seconds > 0:
            fakes.delay(channel, self.delay_seconds)
        if self.mode == "reject":
            fakes.reject(channel, code=self.code, status=self.status, message=self.message, times=self.fail_times)
        elif self.mode == "fail":
            fakes.fail(channel, self.fail_times, status=self.status or 503)
        elif self.mode == "rate_limit":
            fakes.rate_limit(channel, self.retry_after_seconds, self.fail_times, code=self.code)


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
    """`count` entries enqueued straight into the delivery queue (as `delivery create` does);
    `{i}` in `to` is replaced by 0..count-1 (each its own conversation, sent in parallel)."""

    at: float
    channel: str
    to: str
    count: int = 1
    account: str | None = None
    agent: str = "main"
    text: str = "injected delivery"


@attrs.frozen
class Inbound:
    """A person writes to the bot on `channel` (SPEC 11): the fake platform holds the message
    until the gateway's listener polls it. `from` is the sender (the reply's address);
    `contextToken` the WeChat reply context (default: one per message)."""

    at: float
    text: str
    channel: str = "openclaw-weixin"
    from_: str | None = None
    context_token: str | None = None
    count: int = 1


@attrs.frozen
class DropConnection:
    """The fake platform drops the listener's connection on `channel` (a long poll breaks, a
    websocket dies without a close frame)."""

    at: float
    channel: str


Action = (
    StartSession
    | SpawnSubagent
    | Restart
    | ForceRestart
    | StallModelCall
    | KillUpstream
    | InjectDeliveries
    | Inbound
    | DropConnection
)

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
    "inbound": Inbound,
    "drop_connection": DropConnection,
}


def type_name(action: Action) -> str:
    return next((name for name, cls in ACTION_TYPES.items() if type(action) is cls), type(action).__name__)


@attrs.frozen
class Scenario:
    meta: ScenarioMeta
    config: cfg.Config
    model: ModelSpec
    channels: dict[str, ChannelSpec]
    actions: list[Action]
    expects: list[Expectation]
    source: str = "<scenario>"
    faults: Faults = attrs.Factory(Faults)
