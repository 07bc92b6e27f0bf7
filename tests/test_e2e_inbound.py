"""Real processes on loopback (SPEC 11): a gateway long-polling the fake WeChat server, restarted
and SIGKILLed while people keep writing. Every message is answered, none twice."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from helpers import STARTUP_SECONDS, WAIT_SECONDS, Proc, cli, poll

pytestmark = pytest.mark.e2e
WX = "openclaw-weixin"


@pytest.fixture
def fake_url() -> Iterator[str]:
    cmd = [sys.executable, "-m", "trio_gateway.sim.fake_channels", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        yield url
    finally:
        proc.kill()
        proc.wait(WAIT_SECONDS)


def control(url: str, **command: object) -> None:
    httpx2.post(f"{url}/_fake/control", json=command, timeout=WAIT_SECONDS, trust_env=False).raise_for_status()


def answers(url: str) -> list[dict[str, str]]:
    reply = httpx2.get(f"{url}/_fake/messages", timeout=WAIT_SECONDS, trust_env=False)
    return [m for m in reply.json() if m["channel"] == WX]


def start(home: Path, fake: str) -> Proc:
    config = {
        "gateway": {"drain": {"timeoutSeconds": 5}, "channelStopTimeoutSeconds": 2},
        "channels": {WX: {"accounts": {"bot1": {"baseUrl": fake, "tokenEnv": "E2E_WX_TOKEN", "dmPolicy": "open"}}}},
        "agents": {"main": {"channels": [WX], "accountId": "bot1"}},
        # One send at a time: turns run in order per conversation, but above concurrency 1 the
        # delivery worker does not order sends per recipient (README: benchmarks), and this test
        # checks the order people see.
        "delivery": {"initialBackoffSeconds": 0.2, "maxBackoffSeconds": 1, "concurrency": 1},
    }
    home.mkdir(parents=True, exist_ok=True)
    (home / "gateway.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
    env = {**os.environ, "E2E_WX_TOKEN": "wx-e2e-secret"}
    popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env)
    return Proc(home, popen).wait_ready()


def quiet(home: Path, total: int) -> bool:
    cursor = json.loads((home / "inbound" / WX / "bot1.json").read_text())["cursor"]
    shown = cli(home, "gateway", "status", "--json")
    status = json.loads(shown.stdout) if shown.returncode == 0 else {}
    return bool(
        cursor == str(total)
        and status.get("queue", {}).get("pending") == 0
        and status.get("work") == []
        and all(s["state"] == "idle" and s["pendingTurns"] == 0 for s in status.get("sessions", []))
    )


def test_restart_and_sigkill_mid_traffic_lose_nothing_and_answer_nothing_twice(tmp_path: Path, fake_url: str) -> None:
    home = tmp_path / "home"
    gw = start(home, fake_url)
    total, people = 90, 9
    sent: list[str] = []
    stop = threading.Event()

    def write() -> None:
        # People keep writing through the restart and the kill: one message every ~10 ms.
        for i in range(total):
            if stop.is_set():
                return
            text = f"m{i}"
            control(fake_url, action="push", channel=WX, text=text, sender=f"p{i % people}@im.wechat")
            sent.append(text)
            time.sleep(0.01)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        poll("some answers", lambda: len(answers(fake_url)) >= 10)
        restarted = cli(home, "gateway", "restart")
        assert restarted.returncode == 0, restarted.stderr
        poll("answers after the restart", lambda: len(answers(fake_url)) >= 40)
        gw.popen.send_signal(signal.SIGKILL)
        gw.popen.wait(WAIT_SECONDS)
        gw = start(home, fake_url)
        writer.join(STARTUP_SECONDS)
        poll("every message answered", lambda: len(answers(fake_url)) >= total, timeout=STARTUP_SECONDS)
        # Nothing left that could still send a duplicate: the cursor past every message (none
        # will be read again), no turn running, no delivery waiting.
        poll("the gateway quiet", lambda: quiet(home, total), timeout=STARTUP_SECONDS)
        texts = [m["text"] for m in answers(fake_url)]
        status = cli(home, "channels", "status", "--json")
        assert status.returncode == 0, status.stderr
        [account] = json.loads(status.stdout)["channels"]
        assert (account["channel"], account["accountId"], account["inbound"]["state"]) == (WX, "bot1", "listening")
        resumed = cli(home, "channels", "resume", WX, "bot1")
        assert (resumed.returncode, resumed.stdout.strip()) == (
            0,
            f"{WX} bot1 was not paused; its sends were made due again",
        )
        unknown = cli(home, "channels", "resume", WX, "nobody")
        assert (unknown.returncode, unknown.stderr.split(":")[0]) == (1, "NotFoundError")
    finally:
        stop.set()
        writer.join(WAIT_SECONDS)
        gw.stop_hard()
    assert len(sent) == total
    counts = collections.Counter(texts)
    assert sorted(counts) == sorted(sent)  # none lost (the embedded echo model answers with the text)
    assert {t: n for t, n in counts.items() if n > 1} == {}  # none answered twice
    by_person: dict[str, list[int]] = collections.defaultdict(list)
    for m in answers(fake_url):
        by_person[m["to"]].append(int(m["text"].removeprefix("m")))
    assert all(order == sorted(order) for order in by_person.values())  # in order per conversation
    assert "[CHANNEL] Stopped channel=openclaw-weixin account=bot1 in" in (home / "logs" / "gateway.log").read_text()
