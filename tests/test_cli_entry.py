"""The CLI's entry point at its edges, in real processes: a taken port, a reader that closes
the pipe early. One clear line (or none), never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trio_gateway import cli

pytestmark = pytest.mark.e2e


def trio_gateway(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_gateway", *args], capture_output=True, text=True, timeout=120, check=False, **kw
    )  # type: ignore[call-overload]


def test_start_on_a_busy_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = trio_gateway("--home", str(tmp_path), "gateway", "start", "--port", str(port))
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == f"ListenError: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "gateway.state.json").exists()  # nobody is told a gateway runs here


def test_a_reader_that_closes_the_pipe_early_ends_the_command_quietly(tmp_path: Path) -> None:
    """`scenario list | head -3`: the reader is gone before the command writes. Made certain
    by closing the pipe's read end before the process starts."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trio_gateway", "scenario", "list"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == cli.BROKEN_PIPE_EXIT
