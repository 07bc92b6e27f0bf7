"""`trio-gateway delivery ...` end to end through `cli.main`, in process."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
from pathlib import Path

import attrs
import pytest
import trio

from trio_gateway import cli
from trio_gateway.channels.base import OK, Outcome
from trio_gateway.cli import delivery as cli_delivery
from trio_gateway.cli.progress import Progress
from trio_gateway.log import EventLog
from trio_gateway.policy.entry import DeliveryEntry, Payload
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import inline
from trio_gateway.storage.base import Claimed
from trio_gateway.storage.queue import DeliveryQueue

NOW = dt.datetime.now(dt.UTC)


def run(home: Path, *argv: str) -> int:
    return cli.main(["--home", str(home), *argv])


def queue_files(home: Path, sub: str = "") -> list[str]:
    folder = home / "delivery-queue" / sub
    return sorted(n for n in os.listdir(folder) if n.endswith(".json")) if folder.exists() else []


def seed(home: Path, channel: str, to: str, origin: Origin | None) -> DeliveryEntry:
    queue = DeliveryQueue(home / "delivery-queue", inline, EventLog())
    entry_id = queue.new_id(NOW)
    entry = DeliveryEntry(
        entry_id, "subagent_failure", channel, to, "bot-1", "main", origin, Payload("x"), entry_id, NOW, NOW
    )
    trio.run(queue.enqueue, entry)
    return entry


def test_create_with_a_mismatched_address_exits_3_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(tmp_path, "delivery", "create", "--channel", "feishu", "--to", "o9cq80abc@im.wechat", "--text", "hi")
    assert code == 3
    err = capsys.readouterr().err
    assert err.startswith("DeliveryValidationError: channel=feishu, address=o9cq80abc@im.wechat")
    assert queue_files(tmp_path) == []
    assert "[VALIDATION] Channel-address mismatch" in (tmp_path / "logs" / "gateway.log").read_text()


def test_create_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path, "delivery", "create", "--channel", "console", "--to", "me", "--text", "hello") == 0
    entry_id = capsys.readouterr().out.strip()
    assert queue_files(tmp_path) == [f"{entry_id}.json"]
    assert run(tmp_path, "delivery", "list") == 0
    out = capsys.readouterr().out
    assert entry_id in out
    assert "console:me" in out
    assert run(tmp_path, "delivery", "list", "--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["state"], listed["kind"], listed["payload"]) == (
        entry_id,
        "pending",
        "manual",
        {"text": "hello"},
    )


def test_retry_moves_a_dead_letter_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = seed(tmp_path, "console", "me", None)
    queue = DeliveryQueue(tmp_path / "delivery-queue", inline, EventLog())

    async def kill() -> None:
        claimed = await queue.claim(entry.id, NOW)
        assert isinstance(claimed, Claimed)
        await queue.dead_letter(claimed, "HTTP 404", NOW)

    trio.run(kill)
    assert run(tmp_path, "delivery", "list", "--failed") == 0
    assert "HTTP 404" in capsys.readouterr().out
    assert run(tmp_path, "delivery", "retry", entry.id) == 0
    assert queue_files(tmp_path) == [f"{entry.id}.json"]
    assert queue_files(tmp_path, "failed") == []
    assert run(tmp_path, "delivery", "retry", "nope") == 1
    assert "NotFoundError" in capsys.readouterr().err


def test_repair_dry_run_then_for_real(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wx = Origin("openclaw-weixin", "o9cq80abc@im.wechat", "bot-1")
    misrouted = seed(tmp_path, "feishu", "o9cq80abc@im.wechat", wx)
    orphan = seed(tmp_path, "feishu", "o9@im.wechat", None)
    before = {n: (tmp_path / "delivery-queue" / n).read_bytes() for n in queue_files(tmp_path)}

    assert run(tmp_path, "delivery", "repair", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"{misrouted.id} would re-route feishu:o9cq80abc@im.wechat -> openclaw-weixin:o9cq80abc@im.wechat" in out
    assert f"{orphan.id} would dead-letter" in out
    assert {n: (tmp_path / "delivery-queue" / n).read_bytes() for n in queue_files(tmp_path)} == before

    assert run(tmp_path, "delivery", "repair") == 0
    out = capsys.readouterr().out
    assert "re-routed 1, moved 1 to failed/, skipped 0" in out
    assert queue_files(tmp_path) == [f"{misrouted.id}.json"]
    assert queue_files(tmp_path, "failed") == [f"{orphan.id}.json"]
    fixed = json.loads((tmp_path / "delivery-queue" / f"{misrouted.id}.json").read_text())
    assert fixed["channel"] == "openclaw-weixin"


@attrs.define
class FakeChannels:
    outcomes: dict[str, Outcome]
    closed: bool = False

    def get(self, channel: str, account_id: str | None) -> FakeChannels.One | None:
        return FakeChannels.One(channel, self.outcomes[channel]) if channel in self.outcomes else None

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.closed = True

    @attrs.define
    class One:
        name: str
        outcome: Outcome
        deduplicates: bool = True

        async def send(self, entry: DeliveryEntry) -> Outcome:
            await trio.lowlevel.checkpoint()
            return self.outcome

        async def aclose(self) -> None:
            await trio.lowlevel.checkpoint()


def test_process_once_prints_a_line_per_entry_and_fails_unless_all_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes = FakeChannels({"console": OK, "slack": Outcome("retry", "HTTP 503")})
    monkeypatch.setattr(cli_delivery, "channels_for", lambda _config, _home: fakes)
    good = seed(tmp_path, "console", "me", None)
    assert run(tmp_path, "delivery", "process", "--once") == 0
    assert capsys.readouterr().out == f"{good.id} ok channel=console to=me\n"
    assert fakes.closed

    flaky = seed(tmp_path, "slack", "C01234567", None)
    assert run(tmp_path, "delivery", "process", "--once") == 1
    assert capsys.readouterr().out.startswith(f"{flaky.id} retry channel=slack to=C01234567 in ")
    assert queue_files(tmp_path) == [f"{flaky.id}.json"]


def test_progress_bar_only_on_a_terminal_with_many_items() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(400, stream)
        for n in range(1, 401):
            bar.update(n)
        bar.close()
    assert pipe.getvalue() == ""
    assert tty.getvalue().endswith("[##############################] 400/400\n")
    assert tty.getvalue().count("\r") <= 31
