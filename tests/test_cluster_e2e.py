"""Cluster mode with real processes (SPEC 12): two gateways, two homes, one PostgreSQL, a slow
Slack stand-in on loopback that knows which node sent each message (one token per node).
Every wait polls an observed state under a generous bound; the kill happens on a count the
fake server saw, never after a sleep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx2
import psycopg
import pytest
from helpers import poll as e2e_poll

from trio_gateway.app.assemble import CLOCK_SKEW_ENV
from trio_gateway.sim.slow_slack import SlowSlack

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

STARTUP_SECONDS = 60.0
WAIT_SECONDS = 90.0
ACCOUNT = "ws"


def _chat(i: int) -> str:
    """One of 16 Slack channels: one conversation is sent one entry at a time (SPEC 15), so the
    300 entries go to 16 conversations for both nodes to have several sends in flight."""
    return f"C01234567{i % 16:02d}"


def poll(
    what: str, check: Callable[[], Any], timeout: float = WAIT_SECONDS, explain: Callable[[], str] = lambda: ""
) -> Any:
    """helpers' poll with this file's longer bound (two nodes and a database on a busy machine)."""
    return e2e_poll(what, check, timeout, every=0.02, explain=explain)


def undelivered_rows(dsn: str, slack: SlowSlack, texts: set[str]) -> str:
    """For a timed-out wait: which texts Slack never got, and their queue rows as they are
    now (a row gone means it was acked or never enqueued)."""
    missing = sorted(texts - set(slack.texts()))
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT entry->>'text', id, state, entry->>'attempts', next_attempt_at, claim_node, claim_fence,"
            " lease_until, send_started_at, entry->>'lastError' FROM deliveries WHERE entry->>'text' = ANY(%s)"
            " ORDER BY id",
            (missing,),
        ).fetchall()
        nodes = conn.execute("SELECT node_id, state, heartbeat_at FROM nodes ORDER BY node_id").fetchall()
    lines = [f"\n{len(missing)} never delivered: {missing[:20]}", f"nodes: {nodes}", "their rows:"]
    lines += [repr(r) for r in rows[:20]]
    return "\n".join(lines)


@attrs.define
class Node:
    name: str
    home: Path
    popen: subprocess.Popen[str]
    url: str = ""
    token: str = ""
    client: httpx2.Client = attrs.Factory(lambda: httpx2.Client(timeout=30, trust_env=False))

    @property
    def slack_token(self) -> str:
        return f"token-{self.name}"

    @property
    def log(self) -> str:
        path = self.home / "logs" / "gateway.log"
        return path.read_text() if path.exists() else ""

    def http(self, method: str, path: str, body: object = None) -> httpx2.Response:
        headers = {"Authorization": f"Bearer {self.token}"}
        return self.client.request(method, self.url + path, json=body, headers=headers)

    def wait_ready(self) -> Node:
        def ready() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"node {self.name} exited {self.popen.returncode}")
            try:
                state = json.loads((self.home / "gateway.state.json").read_text())
            except (FileNotFoundError, ValueError):
                return False
            if state.get("pid") != self.popen.pid or state.get("state") != "running" or not state.get("url"):
                return False
            self.url = state["url"]
            self.token = (self.home / "gateway.token").read_text().strip()
            return True

        poll(f"node {self.name} to accept work", ready, STARTUP_SECONDS)
        return self

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(30)
        self.client.close()


def node_config(name: str, slack_url: str) -> dict[str, Any]:
    return {
        "gateway": {"drain": {"timeoutSeconds": 2}, "testEndpoints": {"enabled": True}},
        "channels": {"slack": {"accounts": {ACCOUNT: {"baseUrl": slack_url, "tokenEnv": "SLACK_BOT_TOKEN"}}}},
        "agents": {"main": {"accountId": ACCOUNT, "channels": ["slack"]}},
        "delivery": {"concurrency": 8},
        "cluster": {"backend": "postgres", "nodeId": name, "heartbeatSeconds": 0.5, "deadAfterSeconds": 2},
    }


@pytest.fixture
def slack() -> Iterator[SlowSlack]:
    server = SlowSlack(delay=0.1).start()
    yield server
    server.stop()


@pytest.fixture
def start_node(tmp_path: Path, pg_dsn: str, slack: SlowSlack) -> Iterator[Callable[..., Node]]:
    nodes: list[Node] = []

    def start(name: str, skew: float = 0.0) -> Node:
        home = tmp_path / name
        home.mkdir(exist_ok=True)
        (home / "gateway.json").write_text(json.dumps(node_config(name, slack.url)))
        env = os.environ | {"TRIO_GATEWAY_PG_DSN": pg_dsn, "SLACK_BOT_TOKEN": f"token-{name}"}
        env[CLOCK_SKEW_ENV] = str(skew)  # this node's wall clock runs `skew` seconds off
        cmd = [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"]
        popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True, env=env)
        node = Node(name, home, popen)
        nodes.append(node)
        return node.wait_ready()

    yield start
    for node in nodes:
        node.kill()


def cluster_status(home: Path, dsn: str) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "--home", str(home), "cluster", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"TRIO_GATEWAY_PG_DSN": dsn},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {n["nodeId"]: n for n in json.loads(done.stdout)["nodes"]}


def test_sigkill_of_one_node_mid_delivery_loses_nothing(
    start_node: Callable[[str], Node], slack: SlowSlack, pg_dsn: str
) -> None:
    a, b = start_node("a"), start_node("b")
    storage = a.http("GET", "/v1/status").json()["storage"]
    assert (storage["backend"], storage["nodeId"], storage["full"]) == ("postgres", "a", {})
    assert 'node="b"' in b.http("GET", "/metrics").text
    # Each node's state follows its gateway's at the next heartbeat ("starting" before that).
    poll(
        "both nodes running in GET /v1/cluster",
        lambda: (
            {n["nodeId"]: n["state"] for n in b.http("GET", "/v1/cluster").json()["nodes"]}
            == {"a": "running", "b": "running"}
        ),
    )
    slack.gate.clear()  # the first sends of each node wait until all 300 are queued
    for i in range(300):
        node = (a, b)[i % 2]
        reply = node.http(
            "POST", "/v1/deliveries", {"channel": "slack", "to": _chat(i), "accountId": ACCOUNT, "text": f"m{i}"}
        )
        assert reply.status_code == 202, reply.text
    slack.gate.set()
    # Both nodes are sending (100 ms per send, 8 at a time each): kill a mid-delivery.
    poll("both nodes sending", lambda: len(slack.by_token(a.slack_token)) >= 20 and slack.by_token(b.slack_token))
    a.kill()
    assert len(slack.texts()) < 300  # it was mid-delivery
    sent_by_a = {r.text for r in slack.by_token(a.slack_token)}
    poll(
        "every entry delivered",
        lambda: len(slack.texts()) == 300,
        explain=lambda: undelivered_rows(pg_dsn, slack, {f"m{i}" for i in range(300)}),
    )
    counts = slack.texts()
    assert set(counts) == {f"m{i}" for i in range(300)}
    duplicates = {text for text, n in counts.items() if n > 1}
    # Only sends a had in flight at the kill are sent again, at most its concurrency of them...
    assert duplicates <= sent_by_a
    assert len(duplicates) <= 8
    assert all(counts[t] == 2 for t in duplicates)
    # ...and b says so for each (Slack cannot deduplicate).
    poll("b's queue empty", lambda: b.http("GET", "/v1/status").json()["queue"]["pending"] == 0, WAIT_SECONDS)
    assert b.log.count("Possible duplicate") >= len(duplicates)
    assert "delivery claim(s) of node a" in b.log
    # The operator's view: a is dead (no heartbeat); b, stopped, released everything.
    b.http("POST", "/v1/gateway/stop", {})
    b.popen.wait(60)
    nodes = cluster_status(b.home, pg_dsn)
    assert (nodes["a"]["state"], nodes["a"]["claimsHeld"]) == ("dead", 0)
    assert (nodes["b"]["state"], nodes["b"]["claimsHeld"]) == ("stopped", 0)


def console_replies(node: Node, key: str) -> list[dict[str, Any]]:
    path = node.home / "logs" / "console.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r.get("idempotencyKey") == key]


def test_sigkill_with_a_stalled_turn_the_survivor_finishes_it_once(start_node: Callable[[str], Node]) -> None:
    a, b = start_node("a"), start_node("b")
    stalled = a.http("POST", "/internal/test/stall-model-call", {"durationMs": 600_000}).json()
    turn_id = stalled["turnId"]
    poll(
        "a's stalled model call",
        lambda: any(w["kind"] == "model_call" for w in a.http("GET", "/v1/status").json()["work"]),
    )
    a.kill()
    # b sees a dead after deadAfterSeconds, adopts the session and runs the turn once more.
    [reply] = poll("b's reply to the resumed turn", lambda: console_replies(b, turn_id))
    assert reply["kind"] == "reply"
    assert console_replies(a, turn_id) == []
    assert f"sessionId={stalled['sessionId']}" in b.log
    assert "Adopted a session left with turns pending" in b.log
    assert "Resuming interrupted turn" in b.log
    # Once: nothing more arrives, and b's session has no turn left.
    poll(
        "b's session idle", lambda: all(s["pendingTurns"] == 0 for s in b.http("GET", "/v1/status").json()["sessions"])
    )
    assert len(console_replies(b, turn_id)) == 1


def test_with_clocks_30_s_apart_a_killed_nodes_turn_is_taken_over_within_dead_after_plus_1_s(
    start_node: Callable[..., Node], pg_dsn: str
) -> None:
    """SPEC 12: judged on the database's clock. a's clock runs 30 s ahead, b's 30 s behind: on
    b's own clock a's heartbeats would look a minute fresh, and the takeover would wait for it.
    Measured on the database's timestamps: a's last heartbeat, and b's taking of the session's
    lease (its expiry minus the lease's length, both written by the database's `now()`)."""
    a, b = start_node("a", skew=30.0), start_node("b", skew=-30.0)
    stalled = a.http("POST", "/internal/test/stall-model-call", {"durationMs": 600_000}).json()
    poll(
        "a's stalled model call",
        lambda: any(w["kind"] == "model_call" for w in a.http("GET", "/v1/status").json()["work"]),
    )
    with psycopg.connect(pg_dsn) as conn:
        a.kill()
        killed_at = conn.execute("SELECT now()").fetchone()
    [reply] = poll("b's reply to the resumed turn", lambda: console_replies(b, stalled["turnId"]))
    assert reply["kind"] == "reply"
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM (expires_at - interval '7 days') - %s), node_id FROM leases WHERE key = %s",
            (killed_at[0] if killed_at else None, f"session:{stalled['sessionId']}"),
        ).fetchone()
    assert row is not None
    took, holder = float(row[0]), row[1]
    assert holder == "b"
    config = node_config("a", "")["cluster"]
    # Never before a's last heartbeat (at most one heartbeat before the kill) is deadAfterSeconds
    # old, and at most 1 s after deadAfterSeconds from the kill.
    assert config["deadAfterSeconds"] - config["heartbeatSeconds"] <= took <= config["deadAfterSeconds"] + 1.0, took


def test_a_rolling_restart_under_steady_traffic_loses_no_turn_and_answers_none_twice(
    start_node: Callable[[str], Node],
) -> None:
    nodes = {"a": start_node("a"), "b": start_node("b")}
    accepted: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            for node in list(nodes.values()):  # the first node that accepts takes it
                body = {"agent": "main", "origin": {"channel": "console", "to": f"u{i}"}, "prompt": f"p{i}"}
                try:
                    reply = node.http("POST", "/v1/sessions", body)
                except (httpx2.HTTPError, RuntimeError):
                    continue  # that node is restarting (its client may be closed)
                if reply.status_code == 202:
                    accepted.append(reply.json()["turnId"])
                    break
            time.sleep(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        for name in ("a", "b"):
            node = nodes[name]
            # A turn the drain must cut: the other node resumes it once the node has left.
            stalled = node.http("POST", "/internal/test/stall-model-call", {"durationMs": 60_000}).json()
            accepted.append(stalled["turnId"])
            poll(
                f"{name}'s stalled call",
                lambda n=node: any(w["kind"] == "model_call" for w in n.http("GET", "/v1/status").json()["work"]),
            )
            count = len(accepted)
            node.http("POST", "/v1/gateway/stop", {})
            node.popen.wait(60)
            nodes[name] = start_node(name)  # the same home and node id: a new life
            poll("traffic after the restart", lambda c=count: len(accepted) > c + 5)
    finally:
        stop.set()
        sender.join(30)
    replies: dict[str, int] = {}

    def all_answered() -> bool:
        replies.clear()
        for node in nodes.values():
            path = node.home / "logs" / "console.jsonl"
            for line in path.read_text().splitlines() if path.exists() else []:
                key = json.loads(line).get("idempotencyKey")
                replies[key] = replies.get(key, 0) + 1
        return all(t in replies for t in accepted)

    poll("a reply to every accepted turn", all_answered)
    assert len(accepted) > 20
    assert {t: replies[t] for t in accepted if replies[t] != 1} == {}  # none twice


def test_an_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    config = {"cluster": {"backend": "postgres", "statementTimeoutSeconds": 0.5}}
    (home / "gateway.json").write_text(json.dumps(config))
    done = subprocess.run(
        [sys.executable, "-m", "trio_gateway", "--home", str(home), "gateway", "start", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"TRIO_GATEWAY_PG_DSN": "host=127.0.0.1 port=1 user=nobody dbname=none"},
        check=False,
    )
    assert done.returncode == 1
    assert (
        done.stderr.strip().splitlines()[-1].startswith("ClusterDatabaseError: cannot connect to the cluster database")
    )
    assert "Traceback" not in done.stderr
