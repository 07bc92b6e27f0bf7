"""Scheduled turns (SPEC 6): each cron entry starts a turn every `everySeconds`, with the
entry's origin as its requester, on trio's clock (so a MockClock run fires them virtually)."""

from __future__ import annotations

from typing import Protocol

import trio

from trio_gateway.errors import CronSlotTakenError, GatewayError
from trio_gateway.log import EventLog
from trio_gateway.policy.config import CronEntry
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.base import CRON_SLOT
from trio_gateway.storage.sessions import TurnKind


class Intake(Protocol):
    async def submit(
        self, *, agent_id: str, origin: Origin | None, prompt: str, kind: TurnKind = "inbound"
    ) -> tuple[str, str]: ...


async def run_cron(entries: list[CronEntry], intake: Intake, log: EventLog) -> None:
    async with trio.open_nursery() as nursery:
        for entry in entries:
            nursery.start_soon(_run_entry, entry, intake, log)


async def _run_entry(entry: CronEntry, intake: Intake, log: EventLog) -> None:
    # Fixed-rate on absolute times, so a slow submit does not drift the schedule.
    next_at = trio.current_time() + entry.every_seconds
    while True:
        await trio.sleep_until(next_at)
        next_at += entry.every_seconds
        token = CRON_SLOT.set((entry.id, entry.every_seconds))
        try:
            session_id, turn_id = await intake.submit(
                agent_id=entry.agent, origin=entry.origin, prompt=entry.prompt, kind="cron"
            )
        except CronSlotTakenError:
            log.debug("CRON", "Cron slot fired by another node", cronId=entry.id)
            continue
        except GatewayError as exc:
            log.warn("CRON", "Cron run not started", cronId=entry.id, error=str(exc))
            continue
        except Exception as exc:  # a disk error writing the turn: this run is lost, not the gateway
            log.error("CRON", "Cron run failed to start", cronId=entry.id, error=repr(exc))
            continue
        finally:
            CRON_SLOT.reset(token)
        log.info("CRON", "Cron run started", cronId=entry.id, sessionId=session_id, turnId=turn_id)
