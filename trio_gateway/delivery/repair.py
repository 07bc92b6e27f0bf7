"""`delivery repair` (SPEC 7): re-route or dead-letter the pending entries that were written
wrong before validation existed (the seed's WeChat id queued for Feishu). What to do with each
entry is `scheduler.plan_repair`'s decision; this module claims each entry (a running worker
may be sending it right now) and applies the plan. Deletes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

import attrs

from trio_gateway.channels.registry import check_address
from trio_gateway.delivery.scheduler import RepairAction, Reroute, plan_repair
from trio_gateway.policy.config import AgentConfig
from trio_gateway.policy.entry import DeliveryEntry
from trio_gateway.storage.base import Claimed, DeliveryStore
from trio_gateway.work.clock import WallClock


@attrs.frozen
class RepairReport:
    entry: DeliveryEntry
    action: RepairAction
    done: bool  # False in a dry run, or when the entry was claimed elsewhere meanwhile

    @property
    def line(self) -> str:
        e, a = self.entry, self.action
        verb = "would" if not self.done else "did"
        if isinstance(a, Reroute):
            return f"{e.id} {verb} re-route {e.channel}:{e.to} -> {a.channel}:{a.to} ({a.why})"
        return f"{e.id} {verb} dead-letter {e.channel}:{e.to}: {a.reason}"


async def repair(
    queue: DeliveryStore,
    agents: dict[str, AgentConfig],
    clock: WallClock,
    *,
    dry_run: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[RepairReport]:
    """Re-route or dead-letter every misrouted pending entry. Deletes nothing."""
    entries: Sequence[DeliveryEntry] = await queue.list_pending()
    reports: list[RepairReport] = []
    for n, entry in enumerate(entries, 1):
        if on_progress is not None:
            on_progress(n, len(entries))
        action = plan_repair(entry, agents, check_address)
        if action is None:
            continue
        done = False if dry_run else await _apply(queue, entry, action, clock)
        reports.append(RepairReport(entry, action, done))
    return reports


async def _apply(queue: DeliveryStore, entry: DeliveryEntry, action: RepairAction, clock: WallClock) -> bool:
    # A claim, not a direct write: a running worker may be sending this entry right now.
    # Repair acts whether or not the entry is due: a misrouted entry waiting on a backoff
    # is exactly the seed's case.
    claimed = await queue.claim(entry.id, dt.datetime.max.replace(tzinfo=dt.UTC))
    if not isinstance(claimed, Claimed):
        return False
    now = clock.now()
    if isinstance(action, Reroute):
        await queue.reroute(
            claimed, channel=action.channel, to=action.to, account_id=action.account_id, now=now, why=action.why
        )
    else:
        await queue.dead_letter(claimed, action.reason, now)
    return True
