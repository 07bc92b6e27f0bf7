"""The container image, run the way the image would run it, without a container runtime.

There is no Docker daemon on the machines this suite runs on, so the test does what the
Dockerfile does, in a clean venv: build the wheel from the source tree (`pip wheel .`), install
it and nothing else into a new venv, take ENV, CMD, HEALTHCHECK and STOPSIGNAL from the
Dockerfile itself, start the gateway with them, run the health check, stall a model call, send
the stop signal and see the drain keep its budget (by the gateway's own figure) and exit 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import attrs
import httpx2
import pytest
from helpers import poll

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parent.parent
DRAIN_SECONDS = 2
TOKEN = "container-secret-token-0123456789abcdef"
# Generous: building and installing a wheel on a busy 2-core machine.
INSTALL_TIMEOUT = 300


@attrs.frozen
class Image:
    env: dict[str, str]
    cmd: list[str]
    healthcheck: list[str]
    stopsignal: signal.Signals


def read_dockerfile(path: Path) -> Image:
    text = path.read_text().replace("\\\n", " ")
    final_stage = text.split("\nFROM ")[-1]  # the runtime stage: what `docker run` sees
    env: dict[str, str] = {}
    for line in final_stage.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line[4:])))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", final_stage, re.M).group(1))  # type: ignore[union-attr]
    health = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", final_stage, re.M)
    stop = re.search(r"^STOPSIGNAL (\w+)$", final_stage, re.M)
    assert health is not None
    assert stop is not None
    return Image(env, cmd, json.loads(health.group(1)), signal.Signals[stop.group(1)])


def test_the_dockerfile_is_slim_non_root_and_checked() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    # Numeric uid:gid: Kubernetes' runAsNonRoot check cannot resolve a user name.
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "--uid 10001 --gid 10001" in text
    image = read_dockerfile(REPO / "Dockerfile")
    assert image.stopsignal == signal.SIGTERM
    assert image.cmd[:3] == ["trio-gateway", "gateway", "start"]
    # The documented grace period covers the default drain timeout (60 s) + 15 s.
    assert "--stop-timeout 75" in text
    compose = (REPO / "compose.yaml").read_text()
    assert "stop_grace_period: 75s" in compose
    # docker-compose 1.x ignores `configs:` (the gateways would start without gateway.json).
    assert not re.search(r"^\s*configs:", compose, re.M)
    assert compose.count("./deploy/gateway.compose.json:/var/lib/trio-gateway/gateway.json:ro") == 2
    unit = (REPO / "deploy" / "trio-gateway.service").read_text()
    # Type=notify + ExecReload, which systemd < 253 understands (test_interop_deploy verifies it).
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "WatchdogSec=30", "TimeoutStopSec=75",
                 "KillSignal=SIGTERM"):  # fmt: skip
        assert re.search(rf"^{re.escape(line)}$", unit, re.M), line
    assert not re.search(r"^(Type=notify-reload|ReloadSignal=)", unit, re.M)


def clean_venv(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    quiet = {"capture_output": True, "text": True, "timeout": INSTALL_TIMEOUT}
    built = subprocess.run([*pip, "wheel", "-q", "--no-deps", "--wheel-dir", str(wheels), str(REPO)], **quiet)
    assert built.returncode == 0, built.stderr
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    [wheel] = wheels.glob("trio_gateway-*.whl")
    target = ["--python", str(venv / "bin" / "python")]
    installed = subprocess.run([*pip, *target, "install", "-q", "--no-compile", str(wheel)], **quiet)
    assert installed.returncode == 0, installed.stderr
    return venv


@pytest.mark.timeout(2 * INSTALL_TIMEOUT + 120)  # a wheel built and installed, then the gateway run
def test_the_images_entry_command_serves_healthz_and_drains_on_its_stop_signal(tmp_path: Path) -> None:
    image = read_dockerfile(REPO / "Dockerfile")
    venv = clean_venv(tmp_path)
    home = tmp_path / "var-lib-trio-gateway"
    secret = tmp_path / "run-secrets" / "gateway_token"
    secret.parent.mkdir()
    secret.write_text(f"{TOKEN}\n")
    secret.chmod(0o600)  # a mounted secret must be readable by the gateway's user only
    home.mkdir()
    config = {"gateway": {"port": 0, "testEndpoints": {"enabled": True}, "drain": {"timeoutSeconds": DRAIN_SECONDS}}}
    (home / "gateway.json").write_text(json.dumps(config))
    # The image's ENV, re-rooted into this test's directories; PATH is the venv's, as in the image.
    env = {**image.env, "TRIO_GATEWAY_HOME": str(home), "TRIO_GATEWAY_TOKEN_FILE": str(secret)}
    env |= {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    assert "PYTHONUNBUFFERED" in env
    # The shipped scenarios are package data: a wheel runs them by name, from any directory.
    listed = subprocess.run(["trio-gateway", "scenario", "list"], env=env, cwd=home, capture_output=True, text=True)
    assert "seed-stalled-model-restart" in listed.stdout, listed.stderr
    seed = ["trio-gateway", "scenario", "run", "seed-stalled-model-restart"]
    ran = subprocess.run(seed, env=env, cwd=home, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    log = (tmp_path / "stderr.log").open("w")
    proc = subprocess.Popen(image.cmd, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT)
    try:
        state = poll("the gateway to accept work", lambda: _running(home), timeout=60)
        assert state["bind"] == "0.0.0.0"
        # The health check, exactly as the image runs it (its `python` is the venv's).
        health = subprocess.run(image.healthcheck, env=env, capture_output=True, text=True, timeout=30)
        assert health.returncode == 0, health.stderr
        url = f"http://127.0.0.1:{state['port']}"
        auth = {"Authorization": f"Bearer {TOKEN}"}
        stalled = httpx2.post(f"{url}/internal/test/stall-model-call", json={}, headers=auth, trust_env=False)
        assert stalled.status_code == 202
        assert httpx2.get(f"{url}/ui", trust_env=False).status_code == 200  # package data made it in
        poll("the stalled call", lambda: "model_call" in httpx2.get(f"{url}/v1/status", headers=auth).text)
        proc.send_signal(image.stopsignal)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    text = (home / "logs" / "gateway.log").read_text()
    assert f"Draining timeout exceeded ({DRAIN_SECONDS * 1000}ms); forcing task abort" in text
    took = re.search(r"\[SHUTDOWN\] Shutdown completed in (\d+)ms after forcing task abort", text)
    assert took is not None
    print(f"\nSIGTERM with a stalled call, budget {DRAIN_SECONDS} s: shutdown in {took.group(1)} ms (gateway's figure)")
    # The gateway's own figure: its budget, plus at most its bounded cleanup.
    assert DRAIN_SECONDS * 1000 <= int(took.group(1)) < (DRAIN_SECONDS + 2) * 1000
    # The token came from the secret; the gateway made none of its own.
    assert not (home / "gateway.token").exists()


def _running(home: Path) -> dict[str, object] | None:
    try:
        state: dict[str, object] = json.loads((home / "gateway.state.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if state.get("state") == "running" and state.get("port") else None


def test_a_missing_token_file_is_a_clear_error(tmp_path: Path) -> None:
    env = {**os.environ, "TRIO_GATEWAY_TOKEN_FILE": str(tmp_path / "absent")}
    done = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "--home", str(tmp_path / "home"), "gateway", "start", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert f"ConfigError: TRIO_GATEWAY_TOKEN_FILE: {tmp_path / 'absent'} does not exist or is empty" in done.stderr
