"""A real gateway process against a hostile disk (issue 9, item 5): `logs/console.jsonl` is a
FIFO nobody reads. Before the fix, `gateway restart --timeout 2` never completed."""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import pytest
from helpers import CLEANUP_BOUND_SECONDS, Proc, cli, poll, stall

pytestmark = pytest.mark.e2e


def test_restart_completes_with_the_console_file_a_fifo(start_gateway: Callable[..., Proc], tmp_path: object) -> None:
    gw = start_gateway()
    os.mkfifo(gw.home / "logs" / "console.jsonl")
    reply = gw.http(
        "POST", "/v1/sessions", {"agent": "main", "origin": {"channel": "console", "to": "ops"}, "prompt": "x"}
    )
    assert reply.status_code == 202
    poll("the console send refused", lambda: "is not a regular file" in gw.log)
    stall(gw)
    done = cli(gw.home, "gateway", "restart", "--timeout", "2", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["drain"]
    assert report["waitedSeconds"] <= 2.0 + CLEANUP_BOUND_SECONDS
    assert gw.health() == {"status": "ok", "generation": 2}
