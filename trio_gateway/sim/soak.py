"""The cluster chaos soak (issue 23): gateway processes on one PostgreSQL, turns from HTTP and from
a fake WeChat account, a seeded schedule of faults, then the independent checker (`chaos.py`).

    result = trio.run(run_soak, Settings(seed=7, turns=2000, conversations=200, work=Path(...)))

Half the conversations talk over HTTP (`POST /v1/sessions` to a random node, one turn at a time:
the next after the 202; a refused or lost request is submitted again, to another random node,
under a new text), the other half write to the fake WeChat account, which one node at a time
listens to. Every reply goes to the fake, which records each send with its idempotency key.
Meanwhile the schedule SIGKILLs, SIGSTOPs and restarts nodes and restarts PostgreSQL. A node that
exits by itself (a start while PostgreSQL is down) is started again, as a supervisor would, and
reported. When the traffic and the faults are over, the soak waits until every accepted turn is
answered and the queue is empty (bounded), then checks.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import psycopg
import trio

from trio_gateway import upstream as http
from trio_gateway.sim.chaos import POSTGRES, Fault, Sent, Turn, Verdict, check, schedule
from trio_gateway.sim.postgres import PgServer, _free_port

WX = "openclaw-weixin"
ACCOUNT = "bot1"
_START_SECONDS = 90.0
_REQUEST_SECONDS = 10.0
_QUIET_SECONDS = 10.0


@attrs.frozen
class Settings:
    seed: int
    work: Path
    turns: int = 2000
    conversations: int = 200
    nodes: int = 3
    traffic_seconds: float = 90.0  # the turns are spread over this, and so are the faults
    mean_fault_gap: float = 3.0
    settle_seconds: float = 240.0  # after the traffic: the bound on "everything answered"


@attrs.define(eq=False)
class Node:
    name: str
    home: Path
    port: int
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    down: bool = False  # a fault holds it down: the supervisor leaves it alone
    token: str = ""
    relaunched: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def launch(self) -> None:
        cmd = [sys.executable, "-m", "trio_gateway", "--home", str(self.home), "gateway", "start"]
        cmd += ["--port", str(self.port)]
        with (self.home / "soak-stderr.log").open("ab") as err:
            self.popen = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=self.env)

    def signal(self, sig: signal.Signals) -> None:
        if self.popen is not None and self.popen.poll() is None:
            os.kill(self.popen.pid, sig)

    def exited(self) -> bool:
        return self.popen is None or self.popen.poll() is not None


def node_config(name: str, fake_url: str) -> dict[str, Any]:
    return {
        "gateway": {"drain": {"timeoutSeconds": 2}},
        "channels": {
            WX: {"accounts": {ACCOUNT: {"baseUrl": fake_url, "tokenEnv": "SOAK_WX_TOKEN", "dmPolicy": "open"}}}
        },
        "agents": {"main": {"channels": [WX], "accountId": ACCOUNT}},
        "delivery": {"concurrency": 8, "initialBackoffSeconds": 0.2, "maxBackoffSeconds": 1.0},
        "cluster": {"backend": "postgres", "nodeId": name, "heartbeatSeconds": 0.5, "deadAfterSeconds": 2},
    }


@attrs.define
class Soak:
    settings: Settings
    pg: PgServer
    dsn: str
    fake_url: str
    nodes: list[Node]
    faults: list[Fault]
    say: Callable[[str], None]
    turns: list[Turn] = attrs.Factory(list)
    client: http.AsyncClient = attrs.Factory(lambda: http.AsyncClient(timeout=_REQUEST_SECONDS, trust_env=False))
    traffic_done: bool = False

    # --- processes ------------------------------------------------------------------------

    async def wait_ready(self, node: Node) -> None:
        with trio.fail_after(_START_SECONDS):
            while True:
                if node.exited() and not node.down:
                    node.launch()
                token = trio.Path(node.home / "gateway.token")  # read in a thread, off the loop
                try:
                    reply = await self.client.get(node.url + "/healthz", timeout=1.0)
                    if reply.status_code == 200 and await token.exists():
                        node.token = (await token.read_text()).strip()
                        return
                except http.HTTPError:
                    pass
                await trio.sleep(0.2)

    async def supervise(self) -> None:
        """Start again a node that exited by itself (not held down by a fault)."""
        while True:
            for node in self.nodes:
                if not node.down and node.exited():
                    code = node.popen.returncode if node.popen is not None else None
                    self.say(f"supervisor: node {node.name} exited by itself (code {code}); started again")
                    node.relaunched += 1
                    node.launch()
            await trio.sleep(0.5)

    async def apply(self, fault: Fault) -> None:
        self.say(f"fault  {fault.describe()}")
        if fault.target == POSTGRES:
            await trio.to_thread.run_sync(self.pg.halt, abandon_on_cancel=True)
            await trio.sleep(fault.hold)
            await trio.to_thread.run_sync(self.pg.launch, abandon_on_cancel=True)
            return
        node = next(n for n in self.nodes if n.name == fault.target)
        node.down = True
        try:
            if fault.kind == "stop":
                node.signal(signal.SIGSTOP)
                await trio.sleep(fault.hold)
                node.signal(signal.SIGCONT)
                return
            node.signal(signal.SIGKILL if fault.kind == "kill" else signal.SIGTERM)
            if node.popen is not None:
                # The process's exit has no trio event: wait for it in a thread, bounded.
                popen = node.popen
                with trio.move_on_after(30):
                    await trio.to_thread.run_sync(popen.wait, abandon_on_cancel=True)
            node.signal(signal.SIGKILL)  # a drain that outlived 30 s
            await trio.sleep(fault.hold)
            node.launch()
        finally:
            node.down = False

    async def run_faults(self) -> None:
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for fault in self.faults:
                await trio.sleep_until(start + fault.at)
                nursery.start_soon(self.apply, fault)

    # --- traffic --------------------------------------------------------------------------

    def _pause(self, rng: random.Random, per_conversation: int) -> float:
        return rng.uniform(0, 2 * self.settings.traffic_seconds / max(1, per_conversation))

    async def http_conversation(self, c: int, count: int) -> None:
        rng = random.Random(f"{self.settings.seed}-h{c}")
        to = f"h{c}@im.wechat"
        for k in range(count):
            await trio.sleep(self._pause(rng, count))
            attempt = 0
            while True:
                node = rng.choice(self.nodes)
                text = f"h{c}-{k}-{attempt}"
                attempt += 1
                body = {"agent": "main", "origin": {"channel": WX, "to": to, "accountId": ACCOUNT}, "prompt": text}
                try:
                    reply = await self.client.post(
                        node.url + "/v1/sessions", json=body, headers={"Authorization": f"Bearer {node.token}"}
                    )
                except http.ConnectError:
                    await trio.sleep(0.2)  # nothing reached the node: no submission
                    continue
                except http.HTTPError:
                    self.turns.append(Turn(to, k, text, accepted=False))
                    continue
                if reply.status_code == 202:
                    ids = reply.json()
                    self.turns.append(Turn(to, k, text, True, ids["sessionId"], ids["turnId"]))
                    break
                if reply.status_code in (400, 401, 404):
                    raise RuntimeError(f"the soak's own request was refused: {reply.status_code} {reply.text}")
                self.turns.append(Turn(to, k, text, accepted=False))  # it may have been written
                await trio.sleep(0.2)

    async def inbound_conversation(self, c: int, count: int) -> None:
        rng = random.Random(f"{self.settings.seed}-i{c}")
        sender = f"i{c}@im.wechat"
        for k in range(count):
            await trio.sleep(self._pause(rng, count))
            text = f"i{c}-{k}"
            command = {"action": "push", "channel": WX, "text": text, "sender": sender}
            (await self.client.post(self.fake_url + "/_fake/control", json=command)).raise_for_status()
            self.turns.append(Turn(sender, k, text, accepted=True))  # the platform has it

    async def run_traffic(self) -> None:
        s = self.settings
        per = [s.turns // s.conversations + (1 if c < s.turns % s.conversations else 0) for c in range(s.conversations)]
        async with trio.open_nursery() as nursery:
            for c, count in enumerate(per):
                if c % 2 == 0:
                    nursery.start_soon(self.http_conversation, c, count)
                else:
                    nursery.start_soon(self.inbound_conversation, c, count)
        self.traffic_done = True

    # --- the end --------------------------------------------------------------------------

    def _database(self) -> tuple[list[tuple[str, str]], int, list[str]]:
        """Sessions (id, conversation), queue entries left, and what still waits to run:
        sessions with pending turns, and turns handed to an owner (when the schema has them)."""
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            sessions = conn.execute("SELECT id, record->'origin'->>'to', pending_turns FROM sessions").fetchall()
            [(left,)] = conn.execute("SELECT count(*) FROM deliveries").fetchall()
            waiting = [f"session {r[0]} ({r[1]}): {r[2]} turn(s) pending" for r in sessions if r[2]]
            if conn.execute("SELECT to_regclass('handoffs')").fetchone() != (None,):
                handed = conn.execute("SELECT session_id, count(*) FROM handoffs GROUP BY session_id").fetchall()
                waiting += [f"session {r[0]}: {r[1]} handed-off turn(s) not taken" for r in handed]
        return [(str(r[0]), str(r[1])) for r in sessions], int(left), waiting

    async def _sent(self) -> list[Sent]:
        requests = (await self.client.get(self.fake_url + "/_fake/requests", timeout=60)).json()
        sent = []
        for r in requests:
            msg = (r.get("body") or {}).get("msg") if isinstance(r.get("body"), dict) else None
            if r.get("channel") == WX and r.get("op") == "send" and isinstance(msg, dict):
                text = msg["item_list"][0].get("text_item", {}).get("text", "")
                sent.append(Sent(str(msg.get("to_user_id")), text, msg.get("client_id")))
        return sent

    async def settle(self) -> None:
        """Until nothing waits to run and the queue is empty, and either every accepted turn is
        answered or nothing was sent for `_QUIET_SECONDS` (some ended in failure notices, or
        were lost: the checker says which); or until nothing was sent for three times that
        (something is stuck: the checker names it)."""
        quiet_since, seen = trio.current_time(), -1
        with trio.move_on_after(self.settings.settle_seconds) as bound:
            while True:
                await trio.sleep(1.0)
                try:
                    _, left, waiting = await trio.to_thread.run_sync(self._database, abandon_on_cancel=True)
                except psycopg.Error:
                    continue
                sent = await self._sent()
                if len(sent) != seen:
                    quiet_since, seen = trio.current_time(), len(sent)
                texts = {s.text for s in sent}
                missing = [t for t in self.turns if t.accepted and t.text not in texts]
                quiet = trio.current_time() - quiet_since
                settled = left == 0 and not waiting and (not missing or quiet >= _QUIET_SECONDS)
                if settled or quiet >= 3 * _QUIET_SECONDS:  # stuck: nothing moves any more
                    await trio.sleep(2.0)  # stragglers (a possible duplicate) still arrive now
                    return
        if bound.cancelled_caught:
            self.say(f"not settled within {self.settings.settle_seconds:g}s: checking what there is")

    async def verdict(self) -> Verdict:
        sessions, left, waiting = await trio.to_thread.run_sync(self._database, abandon_on_cancel=True)
        return check(self.turns, await self._sent(), sessions, left, waiting)


def _start_fake() -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, "-m", "trio_gateway.sim.fake_channels", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise RuntimeError(f"the fake channels server did not start: {url!r}")
    return proc, url


async def run_soak(settings: Settings, say: Callable[[str], None] = print) -> Verdict:
    names = [chr(ord("a") + i) for i in range(settings.nodes)]
    faults = schedule(settings.seed, names, settings.traffic_seconds, mean_gap=settings.mean_fault_gap)
    say(
        f"seed {settings.seed}: {settings.turns} turns over {settings.conversations} conversations, {settings.nodes}"
        f" nodes, traffic over {settings.traffic_seconds:g}s; replay with --seed {settings.seed}"
    )
    say("fault schedule:" + "".join(f"\n  {f.describe()}" for f in faults))
    pg = await trio.to_thread.run_sync(PgServer.start, abandon_on_cancel=True)
    fake, fake_url = await trio.to_thread.run_sync(_start_fake, abandon_on_cancel=True)
    nodes: list[Node] = []
    try:
        dsn = pg.create_database("soak")
        env = os.environ | {"TRIO_GATEWAY_PG_DSN": dsn, "SOAK_WX_TOKEN": "wx-soak-secret"}
        for name in names:
            home = settings.work / name
            await trio.Path(home).mkdir(parents=True, exist_ok=True)
            await trio.Path(home / "gateway.json").write_text(json.dumps(node_config(name, fake_url)))
            nodes.append(Node(name, home, _free_port(), env))
        soak = Soak(settings, pg, dsn, fake_url, nodes, faults, say)
        for node in nodes:
            node.launch()
        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(soak.wait_ready, node)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(soak.supervise)
            async with trio.open_nursery() as work:
                work.start_soon(soak.run_faults)
                work.start_soon(soak.run_traffic)
            say(f"traffic and faults over ({len(soak.turns)} submissions); settling")
            await soak.settle()
            verdict = await soak.verdict()
            nursery.cancel_scope.cancel(reason="soak over")
        relaunched = sum(n.relaunched for n in nodes)
        verdict.counts["faults"] = len(faults)
        verdict.counts["nodes restarted by the supervisor"] = relaunched
        await soak.client.aclose()
        return verdict
    finally:
        for node in nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGKILL)
            if node.popen is not None:
                node.popen.wait(30)
        fake.kill()
        fake.wait(30)
        await trio.to_thread.run_sync(pg.stop, abandon_on_cancel=True)
