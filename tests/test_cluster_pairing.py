"""Pairing in cluster mode (SPEC 12, 15), real processes: two gateways on one PostgreSQL share one
pairing book, so an approval made through one node counts on the other at once; the CLI on a
third home with no gateway reads the same book from the database."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from helpers import Proc, cli

from trio_gateway.cluster.db import Database
from trio_gateway.cluster.pg_pairing import PgPairingBook
from trio_gateway.cluster.schema import migrate
from trio_gateway.log import EventLog

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def cluster_home(home: Path) -> Path:
    home.mkdir(parents=True)
    config = {
        "gateway": {"drain": {"timeoutSeconds": 2}},
        "cluster": {"backend": "postgres", "dsnEnv": "TRIO_GATEWAY_PG_DSN"},
    }
    (home / "gateway.json").write_text(json.dumps(config))
    return home


def strangers(dsn: str, *senders: str) -> list[str]:
    async def offer() -> list[str]:
        db = Database.create(dsn, statement_timeout=5, max_size=1)
        await db.open()
        try:
            await db.run(migrate)
            book = PgPairingBook(db, EventLog())
            now = dt.datetime.now(dt.UTC)
            offered = [await book.offer_code("telegram", "bot1", s, now) for s in senders]
            return [o.code for o in offered if o is not None]
        finally:
            await db.close()

    return trio.run(offer)


def test_an_approval_through_one_node_counts_on_the_other(
    start_gateway: Callable[..., Proc], tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_GATEWAY_PG_DSN", pg_dsn)
    a = start_gateway(cluster_home(tmp_path / "a"))
    b = start_gateway(cluster_home(tmp_path / "b"))
    code42, code43 = strangers(pg_dsn, "42", "43")

    done = cli(a.home, "pairing", "approve", "telegram", code42)
    assert done.returncode == 0, done.stderr
    seen = b.http("GET", "/v1/pairing").json()
    assert [(x["accountId"], x["sender"]) for x in seen["approvals"]] == [("bot1", "42")]
    assert [x["code"] for x in seen["pending"]] == [code43]
    assert json.loads(cli(b.home, "gateway", "status", "--json").stdout)["pairing"] == {"pending": 1, "approvals": 1}
    assert "[ACCESS] Sender approved" in a.log

    # No gateway on this home: the CLI migrates and reads the database itself.
    offline = cluster_home(tmp_path / "c")
    listed = cli(offline, "pairing", "list", "telegram", "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == seen
    revoked = cli(offline, "pairing", "revoke", "telegram", "bot1", "42")
    assert revoked.returncode == 0, revoked.stderr
    assert a.http("GET", "/v1/pairing").json()["approvals"] == []
