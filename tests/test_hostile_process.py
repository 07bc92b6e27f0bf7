"""Real gateway processes against a hostile host (issue 25): a stderr nobody reads, a full or
hung disk, special files where regular ones belong. Each test failed before its fix."""

from __future__ import annotations

import fcntl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import WAIT_SECONDS, Proc, write_config

pytestmark = pytest.mark.e2e

# The smallest pipe Linux makes (one page): a few dozen log lines fill it.
SMALL_PIPE = 4096


@pytest.fixture
def unread_stderr_gateway(tmp_path: Path) -> Iterator[Proc]:
    """A gateway whose stderr is a one-page pipe that nobody reads."""
    home = tmp_path / "home"
    write_config(home)
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert popen.stderr is not None
    fcntl.fcntl(popen.stderr.fileno(), fcntl.F_SETPIPE_SZ, SMALL_PIPE)
    proc = Proc(home, popen)  # type: ignore[arg-type]  # bytes, not text: stderr is never read
    try:
        yield proc.wait_ready()
    finally:
        proc.stop_hard()
        popen.stderr.close()


def test_a_stderr_nobody_reads_never_freezes_the_gateway(unread_stderr_gateway: Proc) -> None:
    """Before: every log line was echoed to stderr from the Trio thread with a blocking write;
    once the pipe was full the whole gateway froze (/healthz timed out, SIGTERM ignored)."""
    gw = unread_stderr_gateway
    turns = 150  # one log line each, ~100 bytes: some 4 pipes' worth
    for n in range(turns):
        origin = {"channel": "console", "to": f"user{n % 20}"}
        reply = gw.http("POST", "/v1/sessions", {"agent": "main", "origin": origin, "prompt": "x"})
        assert reply.status_code == 202
    assert gw.health() == {"status": "ok", "generation": 1}
    assert gw.log.count("\n") >= turns  # the file sink has them all; stderr dropped what it had to
    gw.popen.terminate()
    # Before, SIGTERM went unanswered for good. Nothing is busy, so the drain is immediate and
    # what is left is bounded (the log's flush at exit gives up on the full pipe after 2 s).
    assert gw.popen.wait(WAIT_SECONDS) == 0
    assert "[SHUTDOWN] Shutdown completed cleanly" in gw.log
