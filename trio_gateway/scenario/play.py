"""Performing a scenario's `[[action]]`s at their virtual times against a running gateway."""

from __future__ import annotations

from typing import Any, Literal

import attrs
import trio

from trio_gateway.errors import GatewayError
from trio_gateway.policy.origin import Origin
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.scenario.expect import RestartRecord
from trio_gateway.scenario.format import (
    Action,
    DropConnection,
    ForceRestart,
    Inbound,
    InjectDeliveries,
    KillUpstream,
    Restart,
    SpawnSubagent,
    StallModelCall,
    StartSession,
    Stop,
    type_name,
)
from trio_gateway.sim.harness import Harness


@attrs.define
class Player:
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
                self.note(f"{type_name(action)} skipped: the gateway has stopped")
                continue
            try:
                await self.perform(action, nursery)
            except GatewayError as exc:
                self.harness.log.warn("SCENARIO", f"{type_name(action)} refused: {exc.name}: {exc}")

    async def perform(self, action: Action, nursery: trio.Nursery) -> None:
        match action:
            case StartSession():
                await self._start(action)
            case SpawnSubagent():
                task = f"/spawn {action.subagent or action.agent} {action.task}"
                origin = Origin(action.channel, action.to, action.account)
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
            case Inbound():
                self._inbound(action)
            case DropConnection():
                self.harness.channels.drop_connection(action.channel)
                self.note(f"drop_connection on {action.channel}")

    async def _start(self, action: StartSession) -> None:
        refused = 0
        for i in range(action.count):
            origin = Origin(action.channel, action.to.replace("{i}", str(i)), action.account)
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
        delivery = self.harness.current
        assert delivery is not None  # generation 1 built it before the first action
        for i in range(action.count):
            to = action.to.replace("{i}", str(i))
            await delivery.outbox.submit_manual(action.channel, to, action.account, action.agent, action.text)
        self.note(f"inject_deliveries x{action.count} to {action.channel}:{action.to}")

    def _inbound(self, action: Inbound) -> None:
        for i in range(action.count):
            text = action.text.replace("{i}", str(i))
            sender = None if action.from_ is None else action.from_.replace("{i}", str(i))
            self.harness.channels.push(action.channel, text, sender=sender, context_token=action.context_token)
        self.note(f"inbound x{action.count} on {action.channel} from {action.from_ or 'a user'}: {action.text[:60]}")

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
