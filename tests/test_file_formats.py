"""Files written before the origin became one class (issue 11) still load, and are written back
byte for byte the same: the origin's JSON in `gateway.json` (cron), in a session file and in a
delivery entry is one format, and the one `Origin` class reads all three."""

from __future__ import annotations

import json
from pathlib import Path

import cattrs
import pytest

from trio_gateway.errors import ConfigError
from trio_gateway.log import EventLog
from trio_gateway.policy import codec
from trio_gateway.policy import config as cfg
from trio_gateway.policy.entry import DeliveryEntry, entry_from_json, entry_to_json
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
    b'{"id": "s-1-1", "agent": "main", "origin": {"channel": "openclaw-weixin", "to": "o9@im.wechat", '
    b'"accountId": "bot-1", "deliveryChannel": null, "contextToken": null}, "createdAt": "2026-11-30T12:00:00+00:00", '
    b'"history": [{"role": "user", "content": "hi"}], "turns": [{"id": "turn-1", "prompt": "hi", "origin": '
    b'{"channel": "openclaw-weixin", "to": "o9@im.wechat", "accountId": "bot-1", "deliveryChannel": null, '
    b'"contextToken": "ctx-7"}, "kind": "inbound", "status": "accepted", "resumes": 0, "acceptedAt": '
    b'"2026-11-30T12:00:00+00:00", "stallSeconds": null, "reply": null, "replyKind": null}], "inboundIds": ["m1"], '
    b'"seq": 1}'
)
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
    # The one key retired since (issue 19: the test stall is armed in memory) is not written back.
    assert (tmp_path / "s-1-1.json").read_bytes() == OLD_SESSION.replace(b'"stallSeconds": null, ', b"")


async def test_a_session_file_with_an_armed_stall_loads_without_it(tmp_path: Path) -> None:
    """Written before issue 19 by a turn the test endpoint armed: the stall is dropped, the turn
    kept (it resumes as an ordinary turn, as a resumed turn always did), nothing quarantined."""
    armed = OLD_SESSION.replace(b'"stallSeconds": null', b'"stallSeconds": 600.0')
    (tmp_path / "s-1-1.json").write_bytes(armed)
    [record] = await SessionStore(tmp_path, inline, EventLog()).load_all()
    assert [t.id for t in record.turns] == ["turn-1"]
    assert not (tmp_path / "quarantine").exists()


def test_an_origin_written_before_it_had_a_context_token_still_loads() -> None:
    old = json.loads(OLD_ENTRY)
    del old["requesterOrigin"]["contextToken"], old["requesterOrigin"]["deliveryChannel"]
    assert entry_from_json(old).requester_origin == WX.conversation


def test_a_cron_origin_in_gateway_json_is_the_same_origin() -> None:
    raw = {"cron": [{"id": "d", "agent": "main", "everySeconds": 60, "prompt": "hi", "origin": {"channel": "console"}}]}
    config = cfg.parse(raw)
    assert config.cron[0].origin == Origin("console")
    written = cfg.to_json(config)["cron"][0]["origin"]
    assert written == dict.fromkeys(["to", "accountId", "deliveryChannel", "contextToken"]) | {"channel": "console"}


def test_the_work_kinds_keep_their_snake_case_keys_in_values_and_in_errors() -> None:
    """SPEC 3 spells `recovery`'s keys as the work kinds are spelled; the codec writes them so,
    and an error below them names the key as the file spells it."""
    raw = {"gateway": {"stalledTaskDetection": {"recovery": {"model_call": "none"}}}}
    config = cfg.parse(raw)
    assert config.gateway.stalled_task_detection.recovery.model_call == "none"
    assert "model_call" in cfg.to_json(config)["gateway"]["stalledTaskDetection"]["recovery"]
    with pytest.raises(ConfigError) as bad:
        cfg.parse({"gateway": {"stalledTaskDetection": {"recovery": {"tool_call": "retry"}}}})
    assert bad.value.path == "gateway.stalledTaskDetection.recovery.tool_call"
    with pytest.raises(ConfigError) as unknown:
        cfg.parse({"gateway": {"stalledTaskDetection": {"recovery": {"toolCall": "none"}}}})
    assert unknown.value.what == "unknown key(s): toolCall"


def test_a_file_of_the_wrong_type_is_refused_not_coerced() -> None:
    """The same strict rules for every file: a hand-edited entry with `"attempts": "3"` is an
    error (the queue quarantines it), never silently the number 3."""
    bad = json.loads(OLD_ENTRY) | {"attempts": "3"}
    with pytest.raises(cattrs.BaseValidationError):
        codec.structure(bad, DeliveryEntry)


# A gateway.json written before each kind declared its own account keys (issue 19): every
# platform's keys, each under its own platform.
OLD_GATEWAY_JSON = b"""{"channels": {
  "feishu": {"accounts": {"f": {"baseUrl": "https://open.feishu.cn", "appId": "cli_1", "appSecretEnv": "FS",
    "verificationTokenEnv": "FS_VERIFY", "encryptKeyEnv": "FS_KEY", "inbound": {"mode": "webhook"}}}},
  "openclaw-weixin": {"accounts": {"w": {"baseUrl": "https://wx.example", "tokenEnv": "WX", "contextToken": "c"}}},
  "slack": {"accounts": {"s": {"baseUrl": "https://slack.com/api", "tokenEnv": "SL", "signingSecretEnv": "SL_SIGN",
    "appTokenEnv": "SL_APP"}}},
  "discord": {"accounts": {"d": {"baseUrl": "https://discord.com/api/v10", "tokenEnv": "DC"}}},
  "telegram": {"accounts": {"t": {"baseUrl": "https://api.telegram.org", "tokenEnv": "TG", "secretTokenEnv": "TG_S"}}}
},
"agents": {"main": {"channels": ["console", "feishu", "openclaw-weixin", "slack", "discord", "telegram"]}}}
"""


def test_an_old_gateway_json_with_every_platforms_keys_loads_the_same(tmp_path: Path) -> None:
    from trio_gateway.channels import registry

    path = tmp_path / "gateway.json"
    path.write_bytes(OLD_GATEWAY_JSON)
    config = registry.load_config(path)
    assert path.read_bytes() == OLD_GATEWAY_JSON
    written = cfg.to_json(config)["channels"]
    for channel, section in json.loads(OLD_GATEWAY_JSON)["channels"].items():
        for account_id, old in section["accounts"].items():
            new = written[channel]["accounts"][account_id]
            # Every key it had reads back as it was; what it lacked is its default (None, or
            # SPEC 15's for the new common keys).
            assert {key: new[key] for key in old} == old
            assert new["dmPolicy"] == "pairing"
