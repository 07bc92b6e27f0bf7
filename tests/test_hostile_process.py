"""Real gateway processes against a hostile host (issue 25): a stderr nobody reads, a full or
hung disk, special files where regular ones belong. Each test failed before its fix."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import WAIT_SECONDS, Proc, cli, poll, stall, write_config

from trio_gateway.sim.postgres import PgServer

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


def _mount_or_skip(*args: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a filesystem")
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False, timeout=WAIT_SECONDS)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False, timeout=WAIT_SECONDS)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a disk the test fills with `fill`."""
    mount = tmp_path / "disk"
    mount.mkdir()
    _mount_or_skip("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount))
    try:
        yield mount
    finally:
        _umount(mount)


def fill(disk: Path) -> None:
    """Every free block of `disk` taken."""
    with contextlib.suppress(OSError), (disk / "filler").open("ab", buffering=0) as f:
        while True:
            f.write(b"\0" * 4096)


@pytest.fixture
def freezable_disk(tmp_path: Path) -> Iterator[Path]:
    """A loop-mounted ext4 the test can freeze (`fsfreeze -f`); thawed and unmounted after."""
    image, mount = tmp_path / "disk.ext4", tmp_path / "frozen"
    mount.mkdir()
    with image.open("wb") as f:
        f.truncate(64 * 1024 * 1024)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, check=False, timeout=WAIT_SECONDS)
    if made.returncode != 0:
        pytest.skip("mkfs.ext4 is not available")
    _mount_or_skip("-o", "loop", str(image), str(mount))
    try:
        yield mount
    finally:
        subprocess.run(["fsfreeze", "-u", str(mount)], capture_output=True, check=False, timeout=WAIT_SECONDS)
        _umount(mount)


def start_with_stderr_to(home: Path, stderr: Path) -> Proc:
    """A gateway whose stderr goes to a file off its own disk (its log file may not be written)."""
    write_config(home)
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    with stderr.open("w") as err:
        popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
    return Proc(home, popen).wait_ready()


def test_a_full_disk_at_start_is_one_clean_error(small_disk: Path) -> None:
    """Before: a raw traceback (ENOSPC creating the token)."""
    fill(small_disk)
    done = cli(small_disk / "home", "gateway", "start", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.startswith("InsufficientStorageError: the home's disk is full"), done.stderr
    assert "Traceback" not in done.stderr


def test_a_stop_on_a_full_disk_exits_0(small_disk: Path, tmp_path: Path) -> None:
    """Before: ENOSPC from the state file's write killed the process mid-drain (exit 1)."""
    stderr = tmp_path / "stderr.txt"
    gw = start_with_stderr_to(small_disk / "home", stderr)
    try:
        fill(small_disk)
        gw.popen.terminate()
        assert gw.popen.wait(WAIT_SECONDS) == 0
        said = stderr.read_text()
        assert "[STATE] Cannot write gateway.state.json" in said
        assert "[SHUTDOWN] Shutdown completed cleanly" in said
    finally:
        gw.stop_hard()


def test_a_sighup_on_a_full_disk_restarts_and_the_gateway_stays_up(small_disk: Path, tmp_path: Path) -> None:
    """Before: the same ENOSPC killed the process mid-restart."""
    stderr = tmp_path / "stderr.txt"
    gw = start_with_stderr_to(small_disk / "home", stderr)
    try:
        fill(small_disk)
        gw.popen.send_signal(signal.SIGHUP)
        poll("generation 2", lambda: "[RESTART] generation=2 accepting work" in stderr.read_text())
        assert gw.health() == {"status": "ok", "generation": 2}
        assert "[STATE] Cannot write gateway.state.json" in stderr.read_text()
        gw.popen.terminate()
        assert gw.popen.wait(WAIT_SECONDS) == 0
    finally:
        gw.stop_hard()


def test_a_stop_with_the_home_disk_frozen_exits_within_its_bound(freezable_disk: Path, tmp_path: Path) -> None:
    """Before: the state file's write (not abandonable) held the stop, and the exit backstop was
    cancelled with the nursery it lived in: stop never exited while the disk was frozen. Now an
    OS-thread backstop ends the process with os._exit once the HTTP grace (5 s) and the exit's
    cleanup (3 s) have passed since the gateway stopped (at most the drain's budget, 2 s, and
    its cleanup, 2 s, after the request)."""
    stderr = tmp_path / "stderr.txt"
    gw = start_with_stderr_to(freezable_disk / "home", stderr)
    try:
        subprocess.run(["fsfreeze", "-f", str(freezable_disk)], check=True, timeout=WAIT_SECONDS)
        gw.popen.terminate()
        poll("the forced exit", lambda: "Forced exit: the stop did not finish within 8s" in stderr.read_text())
        assert "exitCode=0" in stderr.read_text()  # the drain had completed; only leaving was stuck
    finally:
        # The kernel finishes the exit once no thread waits on the frozen disk any more.
        subprocess.run(["fsfreeze", "-u", str(freezable_disk)], check=False, timeout=WAIT_SECONDS)
        with contextlib.suppress(subprocess.TimeoutExpired):
            gw.popen.wait(WAIT_SECONDS)
        gw.stop_hard()
    assert gw.popen.returncode == 0


@contextlib.contextmanager
def database_hung(pg_server: PgServer) -> Iterator[None]:
    """Every process of the PostgreSQL server stopped (SIGSTOP): connections stay open and
    nothing answers. Continued after, whatever happens."""
    postmaster = int((pg_server.data_dir / "postmaster.pid").read_text().split()[0])
    children = subprocess.run(["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False)
    pids = [postmaster, *(int(pid) for pid in children.stdout.split())]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _stamp(line: str) -> dt.datetime:
    return dt.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00"))


@pytest.mark.postgres
def test_a_cluster_stop_with_the_database_hung_stays_bounded_and_says_it_aborted(
    pg_server: PgServer, pg_dsn: str, tmp_path: Path
) -> None:
    """Before: 8.3 s for a 2 s budget (the heartbeat's query cancel waited 2 s, the leave 4 s
    more, its pool close 2 s more) and "Shutdown completed cleanly" for a drain that cut work."""
    home = tmp_path / "home"
    cluster = {"backend": "postgres", "nodeId": "n1", "heartbeatSeconds": 0.5, "deadAfterSeconds": 2}
    home.mkdir()
    config = {"gateway": {"drain": {"timeoutSeconds": 2}, "testEndpoints": {"enabled": True}}, "cluster": cluster}
    (home / "gateway.json").write_text(json.dumps(config))
    stderr = tmp_path / "stderr.txt"
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    with stderr.open("w") as err:
        popen = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=err, env=os.environ | {"TRIO_GATEWAY_PG_DSN": pg_dsn}
        )
    gw = Proc(home, popen).wait_ready()  # type: ignore[arg-type]
    try:
        assert stall(gw)
        with database_hung(pg_server):
            gw.popen.terminate()
            assert gw.popen.wait(WAIT_SECONDS) == 0
    finally:
        gw.stop_hard()
    lines = stderr.read_text().splitlines()
    [shutdown] = [ln for ln in lines if "[SHUTDOWN] Shutdown completed" in ln]
    assert "after forcing task abort" in shutdown
    assert "cleanly" not in shutdown
    [left] = [ln for ln in lines if "Could not leave the cluster within 2s" in ln]
    # The gateway's own clock: the leave gave up within its one bound (before: 6 s here).
    assert (_stamp(left) - _stamp(shutdown)).total_seconds() < 4.0


def _plant_special_files(home: Path) -> list[Path]:
    """A FIFO and `/dev/zero` under entry and session names, and a temporary file named just
    `.tmp` in inflight/: each wedged, filled or crashed a start before issue 25."""
    queue, sessions = home / "delivery-queue", home / "sessions"
    for directory in (queue / "inflight", sessions):
        directory.mkdir(parents=True, exist_ok=True)
    planted = [
        queue / "01KV4MQYB0CCE5J3YQHTW8Q7VS.json",
        queue / "01KV4MQYB0CCE5J3YQHTW8Q7VT.json",
        sessions / "s-1-1.json",
        sessions / "s-1-2.json",
        queue / "inflight" / ".tmp",
    ]
    os.mkfifo(planted[0])
    planted[1].symlink_to("/dev/zero")
    os.mkfifo(planted[2])
    planted[3].symlink_to("/dev/zero")
    planted[4].write_text("")
    return planted


def test_special_files_in_the_queue_and_sessions_are_quarantined_not_read(tmp_path: Path) -> None:
    """Before: `delivery process --once` and the start died on `.tmp` (IndexError), and a FIFO
    or /dev/zero under an entry's or a session's name blocked the scan or grew the process by
    gigabytes."""
    home = tmp_path / "home"
    write_config(home)
    planted = _plant_special_files(home)
    once = cli(home, "delivery", "process", "--once", timeout=WAIT_SECONDS)
    assert once.returncode == 0, once.stderr
    assert not (home / "delivery-queue" / "inflight" / ".tmp").exists()
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    gw = Proc(home, popen)
    try:
        gw.wait_ready()
        assert gw.health()["status"] == "ok"
    finally:
        gw.stop_hard()
    assert not any(path.is_symlink() or path.exists() for path in planted)  # each moved aside, none deleted
    kept = [*(home / "delivery-queue" / "quarantine").iterdir(), *(home / "sessions" / "quarantine").iterdir()]
    assert len(kept) == len(planted)


def test_the_process_watches_its_event_loop(start_gateway: Callable[..., Proc]) -> None:
    """The loop watch is installed in the real process: with a 1 ms threshold, steps that long
    (the start's own) are logged with their task and counted in /metrics."""
    gw = start_gateway(loopBlockWarnMs=1)
    for n in range(5):
        origin = {"channel": "console", "to": f"user{n}"}
        assert gw.http("POST", "/v1/sessions", {"agent": "main", "origin": origin, "prompt": "x"}).status_code == 202
    poll("a [LOOP] line", lambda: "[LOOP] Blocked " in gw.log)
    assert " ms in task " in next(ln for ln in gw.log.splitlines() if "[LOOP] Blocked" in ln)
    metrics = gw.http("GET", "/metrics").text
    [count] = [ln for ln in metrics.splitlines() if ln.startswith("trio_gateway_event_loop_blocked_seconds_count")]
    assert float(count.split()[-1]) >= 1
