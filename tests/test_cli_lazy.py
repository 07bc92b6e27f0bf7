"""The CLI answers at once: a client command loads argparse and an HTTP client, never the
server, hypercorn, trio, the scenario runner or the test fakes. Checked by the modules a real
`python -m trio_gateway ...` process has loaded when it exits (not by timing it: timings are
scripts/bench_cli.py's business)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import trio_gateway

# Run the CLI's own `main` in a fresh interpreter, then print the loaded modules as JSON on
# the last line of stdout.
DRIVER = """
import json, sys
from trio_gateway import cli
code = cli.main(sys.argv[1:])
print(json.dumps(sorted(sys.modules)))
sys.exit(code)
"""

FORBIDDEN = (
    "hypercorn",
    "trio",  # the client side is synchronous: no event loop to start
    "trio_gateway.http",  # the server side (ASGI app, auth, metrics)
    "trio_gateway.runtime.gateway",
    "trio_gateway.app.process",
    "trio_gateway.scenario",
    "trio_gateway.testing",
    "trio_gateway.sim",
    "pytest",
    "_pytest",
    "httpx",
    "httpx2",
    "cattrs",
    "importlib.metadata",
)


def loaded_by(*argv: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    modules: list[str] = json.loads(done.stdout.splitlines()[-1])
    return done, modules


TOKEN = "t0ken-" + "x" * 40


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]


STATUS = {
    "state": "running",
    "generation": 3,
    "uptimeSeconds": 12.0,
    "version": trio_gateway.__version__,
    "queue": {"pending": 0, "failed": 0},
    "stalled": [],
    "sessions": [],
    "work": [],
    "drain": None,
}


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path == "/v1/status" and self.headers["Authorization"] == f"Bearer {TOKEN}"
        body = json.dumps(STATUS if ok else {"error": "UnauthorizedError", "message": "no"}).encode()
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def answering_home(tmp_path: Path) -> Iterator[Path]:
    """A home whose state file points at a loopback server answering /v1/status the way the
    gateway does; its pid is this test process, which is alive."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    state = {"pid": os.getpid(), "url": url, "state": "running", "generation": 3}
    (tmp_path / "gateway.state.json").write_text(json.dumps(state))
    token = tmp_path / "gateway.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)  # the CLI refuses a token file others can read
    yield tmp_path
    server.shutdown()
    thread.join(30)


def test_gateway_status_loads_no_server_and_no_test_code(answering_home: Path) -> None:
    done, modules = loaded_by("--home", str(answering_home), "gateway", "status")
    assert done.returncode == 0, done.stderr
    assert "state: running  generation: 3" in done.stdout
    assert f"version: {trio_gateway.__version__}" in done.stdout
    assert "trio_gateway.cli.client" in modules  # the path under test did run
    assert heavy(modules) == []


def test_gateway_status_without_a_gateway_is_light_too(tmp_path: Path) -> None:
    done, modules = loaded_by("--home", str(tmp_path), "gateway", "status")
    assert done.returncode == 3  # SPEC 4: "stopped", as systemctl says it
    assert done.stdout.startswith("state: stopped")
    assert heavy(modules) == []


def test_only_the_group_that_runs_is_imported(tmp_path: Path) -> None:
    _, modules = loaded_by("--home", str(tmp_path), "session", "list")
    from trio_gateway.cli import GROUPS

    groups = {m for m in modules if m.removeprefix("trio_gateway.cli.") in GROUPS}
    assert groups == {"trio_gateway.cli.session"}
    assert heavy(modules) == []


def test_version_prints_the_package_version_cheaply() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout) == (0, f"trio-gateway {trio_gateway.__version__}\n")
    import importlib.metadata

    assert importlib.metadata.version("trio-gateway") == trio_gateway.__version__


def test_help_lists_every_group_without_importing_them() -> None:
    from trio_gateway import cli

    assert cli.chosen_group(["--home", "gateway", "--log-format", "json", "session", "list"]) == "session"
    assert cli.chosen_group(["--version"]) is None
    assert cli.chosen_group(["nonsense"]) is None
    text = cli.build_parser([]).format_help()
    for name in cli.GROUPS:
        assert name in text
