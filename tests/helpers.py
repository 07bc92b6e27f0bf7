"""What the end-to-end tests share: a gateway as a real process on loopback (`Proc`), the CLI as a
subprocess, and a poll under a deadline. Test modules import these by one spelling,
`from helpers import ...`; the `start_gateway` fixture is conftest.py's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx2

import trio_gateway

# Bounds on waits that only fail a broken test; generous, so a busy machine cannot trip them.
STARTUP_SECONDS = 60.0
WAIT_SECONDS = 30.0
# gateway.drain.cleanupTimeoutSeconds (default): the most a drain may spend on shielded cleanup
# after its deadline; the gateway's own drain report is checked against it.
CLEANUP_BOUND_SECONDS = 2.0


def cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_gateway", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def poll(
    what: str,
    check: Callable[[], Any],
    timeout: float = WAIT_SECONDS,
    every: float = 0.05,
    explain: Callable[[], str] = lambda: "",
) -> Any:
    """`check()` until it is truthy; on timeout, an error naming `what` and `explain()` (what
    the test can say about why, read only then)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{explain()}")
        time.sleep(every)


@attrs.define
class Proc:
    home: Path
    popen: subprocess.Popen[str]
    url: str = ""
    token: str = ""

    @property
    def log(self) -> str:
        path = self.home / "logs" / "gateway.log"
        return path.read_text() if path.exists() else ""

    def http(self, method: str, path: str, body: object = None, *, auth: bool = True) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        return httpx2.request(
            method, self.url + path, json=body, headers=headers, timeout=WAIT_SECONDS, trust_env=False
        )

    def health(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http("GET", "/healthz", auth=False).json()
        assert data.pop("version") == trio_gateway.__version__  # SPEC 4: shown in /healthz too
        return data

    def wait_ready(self) -> Proc:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"gateway exited {self.popen.returncode}: {self.popen.stderr}")
            state_path = self.home / "gateway.state.json"
            try:
                state = json.loads(state_path.read_text())
            except (FileNotFoundError, ValueError):
                return False
            # After a SIGKILL the old process's state file is still there: wait for ours.
            if state.get("pid") != self.popen.pid or state.get("state") != "running" or not state.get("url"):
                return False
            self.url = state["url"]
            self.token = (self.home / "gateway.token").read_text().strip()
            return True

        poll("the gateway to accept work", ready, STARTUP_SECONDS)
        return self

    def stop_hard(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(WAIT_SECONDS)


def write_config(home: Path, **gateway: Any) -> None:
    section = {"testEndpoints": {"enabled": True}, "drain": {"timeoutSeconds": 2}} | gateway
    home.mkdir(parents=True, exist_ok=True)
    (home / "gateway.json").write_text(json.dumps({"gateway": section}))


def stall(proc: Proc) -> str:
    reply = proc.http("POST", "/internal/test/stall-model-call", {"durationMs": 600_000})
    assert reply.status_code == 202
    session_id: str = reply.json()["sessionId"]
    poll(
        "the stalled model call",
        lambda: any(w["kind"] == "model_call" for w in proc.http("GET", "/v1/status").json()["work"]),
    )
    return session_id


def console_texts(home: Path) -> list[str]:
    path = home / "logs" / "console.jsonl"
    if not path.exists():
        return []
    return [json.dumps(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]


def gateway_processes(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """What the `start_gateway` fixture yields: start a gateway in a home (`tmp_path/home` by
    default, configured with `**gateway`) and wait until it accepts work; every one started is
    killed at the end."""
    procs: list[Proc] = []

    def start(home: Path | None = None, **gateway: Any) -> Proc:
        home = home or tmp_path / "home"
        if gateway or not (home / "gateway.json").exists():
            write_config(home, **gateway)
        cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
        popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        proc = Proc(home, popen)
        procs.append(proc)
        return proc.wait_ready()

    yield start
    for proc in procs:
        proc.stop_hard()


async def age_heartbeat(node: Any, seconds: float) -> None:
    """`node` last heartbeat `seconds` ago on the database's clock (it stopped beating)."""
    await node.db.run(
        lambda conn: conn.execute(
            "UPDATE nodes SET heartbeat_at = now() - make_interval(secs => %s::float8) WHERE node_id = %s",
            (seconds, node.node_id),
        )
    )
