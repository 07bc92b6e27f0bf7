"""Discord's gateway close codes and resume rules as discord.py (the `interop` extra)
implements them (issue 24). discord.py is asyncio; what is compared here is its decisions,
read from its own code, never run on our loop."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest

from trio_gateway.channels.discord import CLOSE_TO_RESUME, DiscordListener
from trio_gateway.channels.inbound import AuthFailed, ListenError

pytestmark = pytest.mark.interop

gateway = pytest.importorskip("discord.gateway")


def test_we_close_to_resume_with_the_code_discord_py_closes_with() -> None:
    """discord.py closes with 4000 on op 7 and a resumable op 9 (`DiscordWebSocket.close`'s
    default): any code but 1000/1001 keeps the session, per Discord's docs
    (https://discord.com/developers/docs/topics/gateway#closing-connections)."""
    default = inspect.signature(gateway.DiscordWebSocket.close).parameters["code"].default
    assert default == CLOSE_TO_RESUME
    assert CLOSE_TO_RESUME not in (1000, 1001)


def discord_py_reconnects(code: int) -> bool:
    """discord.py's own rule for a close code the gateway sent (`_can_handle_close`)."""
    stub = SimpleNamespace(_close_code=code, socket=SimpleNamespace(close_code=code))
    return bool(gateway.DiscordWebSocket._can_handle_close(stub))


# Discord's close codes: https://discord.com/developers/docs/topics/opcodes-and-status-codes#gateway-gateway-close-event-codes
CODES = [4000, 4001, 4002, 4003, 4004, 4005, 4007, 4008, 4009, 4010, 4011, 4012, 4013, 4014]


@pytest.mark.parametrize("code", CODES)
def test_which_close_codes_reconnect_agrees_with_discord_py(code: int) -> None:
    listener = DiscordListener(http=None, token="t", account_id="a", connect=None)  # type: ignore[arg-type]
    listener.session_id, listener.seq = "s-1", 41
    error = listener._closed(code)
    assert isinstance(error, ListenError) == discord_py_reconnects(code)
    assert isinstance(error, AuthFailed) == (not discord_py_reconnects(code))
    if not discord_py_reconnects(code):
        # A connection discord.py gives up on ends its session: the next start identifies.
        assert (listener.session_id, listener.seq) == (None, None)
