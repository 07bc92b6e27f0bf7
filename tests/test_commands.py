"""Chat commands (SPEC 15, issue 20 item 4) on trio's MockClock: `/stop`, `/new` (`/reset`),
`/status`, `/help`, heard through the one intake step (`channels/heard.submit_heard`) and
answered by the gateway at once, while a turn of the conversation runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio

from trio_gateway.channels.heard import HeardOn, submit_heard
from trio_gateway.channels.inbound import Heard
from trio_gateway.policy import commands, config_keys
from trio_gateway.policy import config as cfg
from trio_gateway.policy.commands import parse_command
from trio_gateway.runtime.gateway import Gateway
from trio_gateway.sim.fake_mcp import FakeMcpServers, in_process_tools
from trio_gateway.sim.runtime import Notice, ScriptedModel, build_gateway

T = TypeVar("T")
ON = HeardOn("telegram", "bot", "main", None)
NO_STALL = {"gateway": {"stalledTaskDetection": {"enabled": False}}}


def config(**overrides: Any) -> cfg.Config:
    raw: dict[str, Any] = {**NO_STALL}
    for key, value in overrides.items():
        raw, _ = config_keys.set_key(raw, key, value)
    return cfg.parse(raw)


async def until(ready: Callable[[], bool]) -> None:
    while not ready():  # noqa: ASYNC110 (state of several objects, no single event to wait on)
        await trio.sleep(0.01)


class Chat:
    """One person's chat with the gateway: each message through `submit_heard`."""

    def __init__(self, gateway: Gateway, notices: list[Notice], to: str = "42") -> None:
        self.gateway, self.notices, self.to, self.n = gateway, notices, to, 0

    async def say(self, text: str) -> tuple[str, str] | None:
        self.n += 1
        heard = Heard(f"{self.to}-{self.n}", self.to, text, sender=f"user{self.to}")
        return await submit_heard(self.gateway.submit_inbound, ON, heard)

    def texts(self) -> list[str]:
        return [n.text for n in self.notices]


async def started(nursery: trio.Nursery, tmp_path: Path, **parts: Any) -> tuple[Gateway, Chat]:
    notices: list[Notice] = []
    gateway, _ = build_gateway(tmp_path, parts.pop("config", None) or config(), notices=notices, **parts)
    await nursery.start(gateway.serve)
    return gateway, Chat(gateway, notices)


def on_disk(tmp_path: Path, session_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((tmp_path / "sessions" / f"{session_id}.json").read_text())
    return data


# --- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bot", "expected"),
    [
        ("/stop", None, "stop"),
        ("  /STOP \n", None, "stop"),
        ("/Reset", None, "new"),
        ("/new", None, "new"),
        ("/status", None, "status"),
        ("/help", None, "help"),
        ("/stop@MyBot", None, "stop"),
        ("/stop@mybot", "MyBot", "stop"),
        ("/stop@other_bot", "MyBot", None),
        ("/stop@", None, None),
        ("/stop now", None, None),
        ("please /stop", None, None),
        ("/stall", None, None),
        ("stop", None, None),
        ("/", None, None),
        ("", None, None),
    ],
)
def test_only_a_whole_message_is_a_command(text: str, bot: str | None, expected: str | None) -> None:
    assert parse_command(text, bot) == expected


# --- /stop ----------------------------------------------------------------------------------


async def test_stop_cancels_the_running_turn_at_once_and_it_is_never_resumed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        accepted = await chat.say("/stall")
        assert accepted is not None
        sid, tid = accepted
        await chat.say("a second question, queued behind it")
        await until(lambda: any(u.kind == "model_call" for u in gateway.registry.for_session(sid)))
        heard_at = trio.current_time()
        await chat.say("/stop")
        # Answered at once (no virtual time passed), durably enqueued before intake returned.
        assert chat.notices[-1].text == commands.STOPPED
        assert chat.notices[-1].at == heard_at
        assert chat.notices[-1].to == "42"
        await trio.sleep(1)
        assert gateway.registry.for_session(sid) == []  # the model call is gone
        assert chat.texts() == [commands.STOPPED]  # no "Sorry, ..." for the stopped turns
        stored = on_disk(tmp_path, sid)
        assert stored["turns"] == []
        assert next((t["id"], t["status"]) for t in stored["stopped"]) == (tid, "stopped")
        assert len(stored["stopped"]) == 2  # the queued one too
        await gateway.request_drain("restart").done.wait()
        await trio.sleep(5)
        assert chat.texts() == [commands.STOPPED]  # nothing resumed
        await chat.say("hello after")
        await until(lambda: len(chat.notices) == 2)
        assert chat.texts()[-1] == "echo: hello after"
        # Saved again since (the new turn): the stopped turns still read `stopped`.
        assert [t["status"] for t in on_disk(tmp_path, sid)["stopped"]] == ["stopped", "stopped"]
        gateway.request_drain("stop")


async def test_a_stopped_turn_is_not_resumed_by_a_new_process(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        await chat.say("/stall")
        await trio.sleep(1)
        await chat.say("/stop")
        # A crash now: the process dies with the turn's cancellation under way.
        nursery.cancel_scope.cancel(reason="crash")
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        await trio.sleep(5)
        assert chat.texts() == []
        assert all(not s.record.turns for s in gateway.sessions.values())
        gateway.request_drain("stop")


async def test_stop_with_nothing_running_says_so(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        await chat.say("/stop")  # no session at all yet
        await chat.say("hi")
        await until(lambda: len(chat.notices) == 2)
        await chat.say("/stop")  # a session, idle
        assert chat.texts() == [commands.NOTHING_TO_STOP, "echo: hi", commands.NOTHING_TO_STOP]
        gateway.request_drain("stop")


async def test_stop_cancels_subagents_too(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        accepted = await chat.say("/spawn main /stall")
        assert accepted is not None
        session = gateway.sessions[accepted[0]]
        await until(lambda: len(chat.notices) == 1)  # "spawned": the turn ended, its subagent runs
        assert len(session.subagents) == 1
        await chat.say("/stop")
        await trio.sleep(1)
        assert session.subagents == {}
        assert gateway.registry.for_session(session.id) == []
        assert chat.texts()[-2:] == [
            commands.STOPPED,
            f"Subagent {chat.notices[-1].text.split()[1]} was cancelled before it finished.",
        ]
        gateway.request_drain("stop")


async def test_stop_tells_the_mcp_server_the_call_is_cancelled(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    fakes = FakeMcpServers()
    tools = config(**{"tools.mcpServers": {"files": {"command": ["fake"]}}, "agents.main.tools": ["files.*"]})
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path, config=tools, tools_factory=in_process_tools(fakes))
        await chat.say("/tool files__hang {}")
        await until(lambda: bool(fakes["files"].calls))
        await chat.say("/stop")
        await until(lambda: bool(fakes["files"].cancelled))  # notifications/cancelled reached it
        assert len(fakes["files"].cancelled) == 1
        await trio.sleep(1)
        assert chat.texts() == [commands.STOPPED]
        gateway.request_drain("stop")


async def test_the_stop_reason_names_the_sender(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        accepted = await chat.say("/stall")
        assert accepted is not None
        await trio.sleep(1)
        inbox = gateway.sessions[accepted[0]].inbox
        assert inbox is not None
        await chat.say("/stop")
        assert inbox._nursery.cancel_scope.cancel_called
        # The reason trio delivers with every Cancelled of the turn's scope.
        assert inbox._nursery.cancel_scope._cancel_reason.reason == "stopped by user42"  # type: ignore[attr-defined]
        gateway.request_drain("stop")


# --- /new, /status, /help -----------------------------------------------------------------


async def test_new_stops_and_the_next_message_starts_a_new_session(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        first = await chat.say("/stall")
        assert first is not None
        await trio.sleep(1)
        await chat.say("/reset")
        assert chat.texts() == [commands.NEW_SESSION]
        second = await chat.say("hello")
        assert second is not None
        assert second[0] != first[0]
        await until(lambda: len(chat.notices) == 2)
        old = on_disk(tmp_path, first[0])  # the old session stays on disk
        assert old["endedAt"] is not None
        assert old["stopped"][0]["status"] == "stopped"
        gateway.request_drain("stop")
    async with trio.open_nursery() as nursery:  # a new process maps the chat to the new session
        gateway, chat = await started(nursery, tmp_path)
        third = await chat.say("again")
        assert third is not None
        assert third[0] == second[0]
        gateway.request_drain("stop")


async def test_status_names_agent_model_session_and_running_work(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        await chat.say("/status")
        assert "Session: none yet" in chat.texts()[0]
        accepted = await chat.say("/stall")
        assert accepted is not None
        await trio.sleep(75)
        await chat.say("/status")
        text = chat.texts()[-1]
        assert "Agent: main (model: default, echo)" in text
        assert f"Session: {accepted[0]}, started 1m 15s ago" in text
        assert "Turns: 1 running, 0 waiting" in text
        assert "- model_call running 1m 15s" in text
        await chat.say("/help")
        assert chat.texts()[-1] == commands.HELP
        gateway.request_drain("stop")


async def slow_disk(fn: Callable[[], T]) -> T:
    """A sessions disk where every read and write takes a virtual second."""
    await trio.sleep(1)
    return fn()


async def test_a_turn_whose_accepting_write_a_stop_overtook_never_runs(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """The person wrote "second" and then "/stop"; "second" was still being written when the
    stop came. It was sent before the stop, so it is stopped with the rest, and never runs."""
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path, session_runner=slow_disk)
        await chat.say("/stall")
        nursery.start_soon(chat.say, "second")
        await trio.sleep(0.5)  # "second" is on its way to disk
        await chat.say("/stop")
        await trio.sleep(5)
        assert chat.texts() == [commands.STOPPED]
        assert all(not s.record.turns for s in gateway.sessions.values())
        gateway.request_drain("stop")


async def test_stop_reaches_turns_waiting_to_be_resumed(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    """A crash left two turns; the next process resumes them one by one. A `/stop` heard before
    the resume reached them stops both: neither goes to the model."""
    async with trio.open_nursery() as nursery:
        _, chat = await started(nursery, tmp_path)
        await chat.say("/stall")
        await chat.say("queued")
        await trio.sleep(1)
        nursery.cancel_scope.cancel(reason="crash")
    model = ScriptedModel()
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path, session_runner=slow_disk, model=model)
        await chat.say("/stop")
        await trio.sleep(10)
        assert chat.texts() == [commands.STOPPED]
        assert model.calls == 0
        gateway.request_drain("stop")


async def test_new_before_any_next_message_survives_a_restart(tmp_path: Path, autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        first = await chat.say("hi")
        await chat.say("/new")
        gateway.request_drain("stop")
    async with trio.open_nursery() as nursery:
        gateway, chat = await started(nursery, tmp_path)
        after = await chat.say("hello")
        assert first is not None
        assert after is not None
        assert after[0] != first[0]  # the ended session is not the conversation's again
        gateway.request_drain("stop")
