"""Files written before the origin became one class (issue 11) still load, and are written back
byte for byte the same: the origin's JSON in `gateway.json` (cron), in a session file and in a
delivery entry is one format, and the one `Origin` class reads all three."""

from __future__ import annotations

import json
from pathlib import Path

from trio_gateway.log import EventLog
from trio_gateway.policy import config as cfg
from trio_gateway.policy.entry import entry_from_json, entry_to_json
from trio_gateway.policy.origin import Origin
from trio_gateway.storage.atomic import compact_json, inline
from trio_gateway.storage.sessions import SessionStore

# Written by the gateway before the change (commit 479b8a7), as they sit on disk.
OLD_ENTRY = (
    b'{"id":"e1","kind":"reply","channel":"openclaw-weixin","to":"o9@im.wechat","accountId":"bot-1",'
    b'"agentId":"main","requesterOrigin":{"channel":"openclaw-weixin","to":"o9@im.wechat","accountId":"bot-1",'
    b'"deliveryChannel":null,"contextToken":"ctx-7"},"payload":{"text":"hi"},"idempotencyKey":"k1",'
    b'"createdAt":"2026-11-30T12:00:00+00:00","nextAttemptAt":"2026-11-30T12:00:00+00:00","version":1,'
    b'"attempts":0,"lastError":null,"sendStartedAt":null,"failedReason":null,"failedAt":null,"retriedAt":null}\n'
)
OLD_SESSION = (
    '{"id": "s-1-1", "agent": "main", "origin": {"channel": "openclaw-weixin", "to": "o9@im.wechat", '
    '"accountId": "bot-1", "deliveryChannel": null, "contextToken": null}, "createdAt": "2026-11-30T12:00:00+00:00", '
    '"history": [{"role": "user", "content": "hi"}], "turns": [{"id": "turn-1", "prompt": "hi", "origin": '
    '{"channel": "openclaw-weixin", "to": "o9@im.wechat", "accountId": "bot-1", "deliveryChannel": null, '
    '"contextToken": "ctx-7"}, "kind": "inbound", "status": "accepted", "resumes": 0, "acceptedAt": '
    '"2026-11-30T12:00:00+00:00", "stallSeconds": null, "reply": null, "replyKind": null}], "inboundIds": ["m1"], '
    '"seq": 1}'
).encode()
WX = Origin("openclaw-weixin", "o9@im.wechat", "bot-1", None, "ctx-7")


def test_an_old_delivery_entry_loads_and_writes_back_the_same_bytes() -> None:
    entry = entry_from_json(json.loads(OLD_ENTRY))
    assert entry.requester_origin == WX
    assert compact_json(entry_to_json(entry)) == OLD_ENTRY


async def test_an_old_session_file_loads_and_writes_back_the_same_bytes(tmp_path: Path) -> None:
    (tmp_path / "s-1-1.json").write_bytes(OLD_SESSION)
    store = SessionStore(tmp_path, inline, EventLog())
    [record] = await store.load_all()
    assert record.origin == WX.conversation
    assert record.turns[0].origin == WX
    await store.save(record)
    assert (tmp_path / "s-1-1.json").read_bytes() == OLD_SESSION


def test_an_origin_written_before_it_had_a_context_token_still_loads() -> None:
    old = json.loads(OLD_ENTRY)
    del old["requesterOrigin"]["contextToken"], old["requesterOrigin"]["deliveryChannel"]
    assert entry_from_json(old).requester_origin == WX.conversation


def test_a_cron_origin_in_gateway_json_is_the_same_origin() -> None:
    raw = {"cron": [{"id": "d", "agent": "main", "everySeconds": 60, "prompt": "hi", "origin": {"channel": "console"}}]}
    config = cfg.parse(raw)
    assert config.cron[0].origin == Origin("console")
    written = cfg.to_json(config)["cron"][0]["origin"]
    assert written == {"channel": "console", "to": None, "accountId": None, "deliveryChannel": None, "contextToken": None}
