"""`trio-gateway pairing list|approve|revoke` as real processes (SPEC 4, 15): with no gateway (on
the home's files) and through a running one; the `pairing` row of `gateway status`; approvals
and pending codes surviving a SIGKILL of the gateway and a restart."""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Callable
from pathlib import Path

import trio
from helpers import Proc, cli, poll

from trio_gateway.log import EventLog
from trio_gateway.storage.access import FileAccessBook
from trio_gateway.storage.atomic import inline


def strangers(home: Path, *senders: str, account: str = "bot1") -> list[str]:
    """Codes given to `senders` now, as the access check gives them (the files the gateway reads)."""
    book = FileAccessBook(home / "access", inline, EventLog())

    async def offer() -> list[str]:
        now = dt.datetime.now(dt.UTC)
        offered = [await book.offer_code("telegram", account, s, now) for s in senders]
        return [o.code for o in offered if o is not None]

    return trio.run(offer)


def listing(home: Path, *args: str) -> dict[str, list[dict[str, str]]]:
    done = cli(home, "pairing", "list", *args, "--json")
    assert done.returncode == 0, done.stderr
    parsed: dict[str, list[dict[str, str]]] = json.loads(done.stdout)
    return parsed


def test_without_a_gateway_the_cli_works_on_the_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    missing = cli(home, "pairing", "list")
    assert (missing.returncode, missing.stderr.split(":")[0]) == (1, "NotFoundError")
    assert not home.exists()  # a read command never creates a home
    home.mkdir()
    code42, code43 = strangers(home, "42", "43")

    text = cli(home, "pairing", "list")
    assert text.returncode == 0, text.stderr
    assert f"bot1             {code42}  sender=42  expires in 59m" in text.stdout
    assert "pending codes (2):" in text.stdout
    assert [p["sender"] for p in listing(home, "telegram")["pending"]] == ["42", "43"]
    assert listing(home, "discord")["pending"] == []

    done = cli(home, "pairing", "approve", "telegram", code43.lower())
    assert (done.returncode, done.stdout) == (0, "approved telegram bot1 sender=43\n"), done.stderr
    assert [a["sender"] for a in listing(home)["approvals"]] == ["43"]
    again = cli(home, "pairing", "approve", "telegram", code43)
    assert again.returncode == 1
    assert again.stderr.startswith(f"NotFoundError: no pending pairing code '{code43}' on channel 'telegram'")
    typo = cli(home, "pairing", "approve", "telgram", code42)
    assert typo.returncode == 3
    assert typo.stderr.startswith("BadRequestError: channel: 'telgram' is not a channel (known: ")

    done = cli(home, "pairing", "revoke", "telegram", "bot1", "43")
    assert (done.returncode, done.stdout) == (0, "revoked telegram bot1 sender=43\n"), done.stderr
    gone = cli(home, "pairing", "revoke", "telegram", "bot1", "43")
    assert (gone.returncode, gone.stderr) == (1, "NotFoundError: '43' has no approval on telegram/bot1\n")
    assert "[ACCESS] Approval revoked" in (home / "logs" / "gateway.log").read_text()
    usage = cli(home, "pairing", "approve", "telegram")
    assert usage.returncode == 2


def test_through_a_running_gateway_and_across_a_sigkill(start_gateway: Callable[..., Proc], tmp_path: Path) -> None:
    home = tmp_path / "home"
    proc = start_gateway(home)
    code42, code43, code44 = strangers(home, "42", "43", "44")
    assert strangers(home, "45") == []  # three live codes per account

    status = cli(home, "gateway", "status")
    assert "pairing: 3 pending code(s), 0 approved sender(s)  (trio-gateway pairing list)" in status.stdout
    row = json.loads(cli(home, "gateway", "status", "--json").stdout)["pairing"]
    assert row == {"pending": 3, "approvals": 0}

    done = cli(home, "pairing", "approve", "telegram", code42)
    assert done.returncode == 0, done.stderr
    assert proc.http("GET", "/v1/pairing").json()["approvals"][0]["sender"] == "42"
    assert "[ACCESS] Sender approved" in proc.log  # the gateway approved it, not the CLI on the files
    done = cli(home, "pairing", "approve", "telegram", code43)
    assert done.returncode == 0, done.stderr
    assert cli(home, "pairing", "revoke", "telegram", "bot1", "43").returncode == 0

    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(30)
    after = start_gateway(home)
    listed = after.http("GET", "/v1/pairing").json()
    assert [a["sender"] for a in listed["approvals"]] == ["42"]
    assert [p["code"] for p in listed["pending"]] == [code44]

    # A graceful stop and start keep them too.
    assert cli(home, "gateway", "stop").returncode == 0
    poll("the gateway to exit", lambda: after.popen.poll() is not None)
    again = start_gateway(home)
    assert again.http("GET", "/v1/pairing").json() == listed
