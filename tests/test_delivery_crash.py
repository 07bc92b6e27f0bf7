"""SIGKILL a real delivery process mid-way and run it again: nothing lost, duplicates only for
sends in flight at the kill, none visible to a reader that deduplicates by key."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from trio_gateway.delivery.outbox import Outbox
from trio_gateway.log import EventLog
from trio_gateway.policy.config import AgentConfig
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import in_thread
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.work.clock import WallClock

ENTRIES = 500
CONCURRENCY = 8
HANG_AFTER = ENTRIES // 3

# A small worker entry point: `process_once` over the real queue with a console-like channel
# that appends one JSON line per send (the way `console` writes logs/console.jsonl).
# `hang_after=N`: every send after the first N writes its line and then never returns (the
# platform took the message, its answer never came back), so the worker stops mid-way in a
# state the test can observe and kill in, however busy the machine. `crash=ack` makes it
# SIGKILL itself inside a batched ack, after the first unlink of a batch of several (a
# deterministic kill in that window); `dedupe=0` gives a channel that cannot deduplicate, so
# resends are logged.
WORKER = """
import json, os, random, signal, sys
from pathlib import Path
import attrs, trio
from trio_gateway.channels.base import OK
from trio_gateway.work.clock import WallClock
from trio_gateway.policy.config import DeliveryConfig
from trio_gateway.delivery.worker import DeliveryWorker
from trio_gateway.log import open_log
from trio_gateway.storage.queue import DeliveryQueue
from trio_gateway.storage.atomic import in_thread
from trio_gateway.work.units import WorkRegistry

home, concurrency = Path(sys.argv[1]), int(sys.argv[2])
opts = dict(a.split("=") for a in sys.argv[3:])

if opts.get("crash") == "ack":
    plain_ack = DeliveryQueue._ack_sync
    acked = [0]

    def ack_then_die(self, claims):
        if len(claims) >= 2 and acked[0] >= 100:
            claims[0].path.unlink()
            os.kill(os.getpid(), signal.SIGKILL)
        acked[0] += len(claims)
        return plain_ack(self, claims)

    DeliveryQueue._ack_sync = ack_then_die

@attrs.define
class SlowConsole:
    out: object
    name: str = "console"
    deduplicates: bool = opts.get("dedupe", "1") == "1"
    started: int = 0
    async def send(self, entry):
        self.started += 1
        nth = self.started
        await trio.sleep(0.004)
        self.out.write(json.dumps({"id": entry.id, "key": entry.idempotency_key}) + "\\n")
        self.out.flush()
        if nth > int(opts.get("hang_after", "-1")) >= 0:
            await trio.sleep_forever()
        return OK
    async def aclose(self):
        pass

@attrs.define
class One:
    channel: SlowConsole
    def get(self, channel, account_id):
        return self.channel if channel in ("console", "telegram") else None

async def main():
    log = open_log(home / "worker.log", echo=None)
    with open(home / "console.jsonl", "a") as out:
        worker = DeliveryWorker(
            DeliveryQueue(home / "delivery-queue", in_thread, log), One(SlowConsole(out)),
            DeliveryConfig(concurrency=concurrency), WallClock.start(), log, WorkRegistry(log), random.Random(),
        )
        results = await worker.process_once()
    print(sum(r.kind == "ok" for r in results))

trio.run(main)
"""


def _poll_until(done: Callable[[], bool], what: Callable[[], object], timeout: float = 60.0) -> None:
    """Wait for a state of the worker seen from outside. The timeout only ends a broken run;
    the state itself is stable once reached (the worker is stuck in its sends)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"the worker never reached the state to kill it in: {what()}"
        time.sleep(0.01)


def _delivered(home: Path) -> list[str]:
    path = home / "console.jsonl"
    if not path.exists():
        return []
    # A line cut by the kill is not a delivery: only whole lines count.
    return [json.loads(line)["key"] for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def _worker(home: Path, script: Path, *opts: str) -> subprocess.Popen[str]:
    args = [sys.executable, str(script), str(home), str(CONCURRENCY), *opts]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def _enqueue(home: Path) -> set[str]:
    log = EventLog()
    outbox = Outbox(DeliveryQueue(home / "delivery-queue", in_thread, log), {}, WallClock.start(), log)
    keys = {
        (await outbox.submit_manual("console", f"user-{i}", None, None, f"m{i}")).idempotency_key
        for i in range(ENTRIES)
    }
    return keys


@pytest.mark.e2e
def test_sigkill_mid_way_loses_nothing(tmp_path: Path) -> None:
    # Real processes on the real clock: the worker is polled from outside, as an operator would.
    keys = trio.run(_enqueue, tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    # Kill on an observed state, not after a sleep: a third sent and acknowledged, then one send
    # per slot that reached the platform (its line is written) and never came back.
    _kill_mid_way(tmp_path, script, HANG_AFTER, CONCURRENCY)
    at_kill = len(_delivered(tmp_path))
    assert at_kill == HANG_AFTER + CONCURRENCY, "the kill lands mid-way"
    inflight = [n for n in os.listdir(tmp_path / "delivery-queue" / "inflight") if not n.startswith(".")]
    assert len(inflight) == CONCURRENCY  # claimed and unfinished: the only candidates for duplicates

    second = _worker(tmp_path, script)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err

    delivered = _delivered(tmp_path)
    counts = collections.Counter(delivered)
    assert set(counts) == keys  # every entry delivered at least once, none lost
    duplicates = sum(n - 1 for n in counts.values())
    assert duplicates == len(inflight)  # exactly the sends in flight at the kill, resent once
    assert len(set(delivered)) == ENTRIES  # what a reader deduplicating by key sees
    assert os.listdir(tmp_path / "delivery-queue" / "inflight") == []  # temporaries of the dead worker too
    assert [n for n in os.listdir(tmp_path / "delivery-queue") if n.endswith(".json")] == []
    assert not (tmp_path / "delivery-queue" / "failed").exists()
    assert int(out) >= ENTRIES - at_kill  # the second run sent at least what the first had not
    assert "Recovered entry" in (tmp_path / "worker.log").read_text()


def _kill_mid_way(home: Path, script: Path, hang_after: int, in_flight: int) -> None:
    """Run the worker until `hang_after` sends are done and `in_flight` more reached the platform
    and never came back, then SIGKILL it."""
    first = _worker(home, script, f"hang_after={hang_after}")
    _poll_until(
        lambda: len(_delivered(home)) == hang_after + in_flight and len(_marked(home)) == in_flight,
        lambda: f"{len(_delivered(home))} delivered, {len(_marked(home))} sending",
    )
    os.kill(first.pid, signal.SIGKILL)
    first.wait()


def _marked(home: Path) -> set[str]:
    """Ids whose inflight file records a started send (`<id>.<pid>.<ms>.json`)."""
    names = os.listdir(home / "delivery-queue" / "inflight")
    return {n.split(".")[0] for n in names if not n.startswith(".") and n.count(".") == 3}


@pytest.mark.e2e
def test_sigkill_inside_a_batched_ack_resends_only_that_batch_and_says_so(tmp_path: Path) -> None:
    keys = trio.run(_enqueue, tmp_path)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)

    first = _worker(tmp_path, script, "crash=ack", "dedupe=0")
    first.communicate(timeout=120)
    assert first.returncode == -signal.SIGKILL, "the worker should have died inside an ack"
    at_kill = collections.Counter(_delivered(tmp_path))
    marked = _marked(tmp_path)
    # The batch being acked: sent, some unlinked before the kill, the rest still marked.
    assert 0 < len(marked) <= CONCURRENCY

    second = _worker(tmp_path, script, "dedupe=0")
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err

    counts = collections.Counter(_delivered(tmp_path))
    assert set(counts) == keys  # nothing lost
    resent = {k for k, n in counts.items() if n > 1}
    assert resent  # the batch's entries not yet unlinked at the kill
    assert resent <= marked  # an acked (unlinked) entry is never resent; only marked ones are
    assert all(at_kill[k] == 1 for k in resent)
    log = (tmp_path / "worker.log").read_text()
    for key in resent:  # every resend of a send that may have happened is logged as such
        assert f"id={key} Possible duplicate" in log
    assert os.listdir(tmp_path / "delivery-queue" / "inflight") == []


# --- a long reply's chunks, ordered per recipient, across a SIGKILL (SPEC 15) ---------------

RECIPIENTS = 5
REPLIES = 30  # per recipient: six each, every one a few Telegram chunks


async def _enqueue_replies(home: Path) -> dict[str, list[str]]:
    """Long replies to a few Telegram chats, each cut into chunks by the outbox: the keys of
    every chat's chunks in the order they were written."""
    log = EventLog()
    queue = DeliveryQueue(home / "delivery-queue", in_thread, log)
    outbox = Outbox(queue, {"main": AgentConfig()}, WallClock.start(), log)
    by_chat: dict[str, list[str]] = collections.defaultdict(list)
    for i in range(REPLIES):
        chat = str(100 + i % RECIPIENTS)
        text = "\n\n".join(f"Reply {i}, paragraph {p}: " + "word " * 300 for p in range(4))
        entries = await outbox.submit_all(
            kind="reply", origin=Origin("telegram", chat), agent_id="main", text=text, idempotency_key=f"turn-{i}"
        )
        assert len(entries) > 1
        by_chat[chat] += [e.idempotency_key for e in entries]
    return by_chat


@pytest.mark.e2e
def test_sigkill_with_chunked_replies_loses_no_chunk_and_keeps_each_chats_order(tmp_path: Path) -> None:
    by_chat = trio.run(_enqueue_replies, tmp_path)
    keys = {k for chunks in by_chat.values() for k in chunks}
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # One send per chat in flight at most (SPEC 15), however many slots the worker has.
    _kill_mid_way(tmp_path, script, len(keys) // 3, RECIPIENTS)
    second = _worker(tmp_path, script)
    _out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err

    delivered = _delivered(tmp_path)
    counts = collections.Counter(delivered)
    assert set(counts) == keys  # no chunk lost
    assert sum(n - 1 for n in counts.values()) <= RECIPIENTS  # only the sends in flight at the kill, once
    seen: list[str] = []
    for key in delivered:
        if key not in seen:
            seen.append(key)
    for chat, chunks in by_chat.items():
        assert [k for k in seen if k in set(chunks)] == chunks, chat  # each chat's chunks in order
