"""Config per kind (issue 19): every channel kind declares its accounts' own keys and rules
(`ChannelKind.accounts`), `policy.config` learns them from the registry only, and the keys every
account shares (SPEC 15's access and reply keys) live in one place, `AccountConfig`.

Each refusal is a `ConfigError` naming the channel, the account and the key, and the file is
read the same way by every entry point (the loader, `config set`, `config validate`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from trio_gateway.channels import registry
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError
from trio_gateway.policy import config as cfg
from trio_gateway.policy.config import AccountConfig

ACCOUNT_KINDS = [kind for kind in registry.KINDS if kind.needs_account]
URL = "http://127.0.0.1:9"


def parse(channel: str, account: dict[str, Any]) -> AccountConfig:
    raw = {"channels": {channel: {"accounts": {"a": account}}}}
    return cfg.parse(raw, registry.account_kinds()).channels[channel].accounts["a"]


def own_keys(kind: Any) -> set[str]:
    """The camelCase keys a kind adds to the common ones."""
    common = {f.name for f in attrs.fields(AccountConfig)}
    return {cfg.codec.camel(f.name) for f in attrs.fields(kind.accounts.account) if f.name not in common}


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda k: k.name)
def test_every_kind_takes_the_common_keys_with_specs_defaults(kind: Any) -> None:
    account = parse(kind.name, {"baseUrl": URL})
    assert isinstance(account, kind.accounts.account)
    # SPEC 15's defaults: pairing for direct messages, mentions in any group from anyone.
    assert (account.dm_policy, account.allow_from) == ("pairing", [])
    assert (account.group_policy, account.groups, account.group_allow_from) == ("mention", ["*"], ["*"])
    assert account.text_chunk_limit is None  # the platform's own limit
    assert account.unsupported_media_reply
    spelled = {
        "dmPolicy": "allowlist",
        "allowFrom": ["123", "*"],
        "groupPolicy": "disabled",
        "groups": ["-1001"],
        "groupAllowFrom": ["42"],
        "textChunkLimit": 2000,
        "unsupportedMediaReply": "",
    }
    account = parse(kind.name, {"baseUrl": URL, **spelled})
    assert (account.dm_policy, account.allow_from, account.group_policy) == ("allowlist", ["123", "*"], "disabled")
    assert (account.groups, account.group_allow_from, account.text_chunk_limit) == (["-1001"], ["42"], 2000)
    assert account.unsupported_media_reply == ""


@pytest.mark.parametrize(
    ("key", "value", "what"),
    [
        ("dmPolicy", "pair", 'expected one of "pairing", "allowlist", "open", "disabled", got "pair"'),
        ("groupPolicy", "all", 'expected one of "mention", "open", "disabled", got "all"'),
        ("allowFrom", "123", None),
        ("allowFrom", [123], "expected a string, got 123"),
        ("groups", [""], None),
        ("groupAllowFrom", [" 42"], None),
        ("textChunkLimit", 10, "must be between 100 and 1000000, got 10"),
        ("textChunkLimit", "4096", 'expected a whole number, got "4096"'),
        ("unsupportedMediaReply", None, None),
    ],
)
def test_a_bad_common_value_names_channel_account_and_key(key: str, value: object, what: str | None) -> None:
    with pytest.raises(ConfigError) as bad:
        parse("telegram", {"baseUrl": URL, key: value})
    assert bad.value.path.startswith(f"channels.telegram.accounts.a.{key}")
    if what is not None:
        assert bad.value.what == what


@pytest.mark.parametrize("kind", ACCOUNT_KINDS, ids=lambda k: k.name)
def test_a_key_of_another_kind_is_an_unknown_key_there(kind: Any) -> None:
    others = set().union(*(own_keys(k) for k in registry.KINDS)) - own_keys(kind)
    assert others, "every kind lacks some other kind's keys"
    for key in sorted(others):
        with pytest.raises(ConfigError) as bad:
            parse(kind.name, {"baseUrl": URL, key: "X"})
        assert str(bad.value) == f"channels.{kind.name}.accounts.a: unknown key(s): {key}"
    for key in sorted(own_keys(kind)):
        assert parse(kind.name, {"baseUrl": URL, key: "X"}) is not None


def test_a_misspelt_common_key_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"^channels\.slack\.accounts\.a: unknown key\(s\): dmPolicies$"):
        parse("slack", {"baseUrl": URL, "dmPolicies": "open"})


def test_console_accounts_take_only_the_common_keys_and_need_no_base_url() -> None:
    assert parse("console", {"dmPolicy": "open"}).dm_policy == "open"
    with pytest.raises(ConfigError, match=r"unknown key\(s\): tokenEnv$"):
        parse("console", {"tokenEnv": "T"})
    with pytest.raises(ConfigError, match=r"^channels\.discord\.accounts\.a\.baseUrl: required$"):
        parse("discord", {"tokenEnv": "T"})


def test_config_get_and_set_know_each_kinds_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    home = tmp_path / "home"
    home.mkdir()
    raw = {"channels": {"feishu": {"accounts": {"f": {"baseUrl": URL, "appId": "cli_1"}}}}}
    (home / "gateway.json").write_text(json.dumps(raw))
    before = (home / "gateway.json").read_bytes()
    run = lambda *argv: main(["--home", str(home), "config", *argv])  # noqa: E731
    assert run("get", "channels.feishu.accounts.f.appId") == 0
    assert run("get", "channels.feishu.accounts.f.dmPolicy") == 0
    assert capsys.readouterr().out.split() == ["cli_1", "pairing"]
    # A key of another kind: refused naming channel, account and key; the file is untouched.
    assert run("set", "channels.feishu.accounts.f.signingSecretEnv", "S") == 2
    err = capsys.readouterr().err
    assert "channels.feishu.accounts.f: unknown key(s): signingSecretEnv" in err
    assert (home / "gateway.json").read_bytes() == before
    assert run("set", "channels.feishu.accounts.f.dmPolicy", "open") == 0
    assert json.loads((home / "gateway.json").read_text())["channels"]["feishu"]["accounts"]["f"]["dmPolicy"] == "open"
    assert run("validate") == 0


def test_to_json_writes_each_kinds_own_keys() -> None:
    raw = {"channels": {"slack": {"accounts": {"s": {"baseUrl": URL, "appTokenEnv": "APP"}}}}}
    written = cfg.to_json(cfg.parse(raw, registry.account_kinds()))["channels"]["slack"]["accounts"]["s"]
    assert written["appTokenEnv"] == "APP"
    assert written["dmPolicy"] == "pairing"
    assert cfg.parse(cfg.to_json(cfg.parse(raw, registry.account_kinds())), registry.account_kinds()) == cfg.parse(
        raw, registry.account_kinds()
    )


@pytest.mark.parametrize(("raw", "loads"), [({}, False), ({"channels": {"console": {}}}, True)])
def test_config_get_loads_the_channel_kinds_only_for_a_file_naming_a_channel(
    tmp_path: Path, raw: dict[str, Any], loads: bool
) -> None:
    """The registry imports every platform module (about 0.4 s on a busy machine): `config get`
    on a file that names no channel does without it, as it did before the kinds had keys."""
    (tmp_path / "gateway.json").write_text(json.dumps(raw))
    program = (
        "import sys\nfrom trio_gateway.cli import main\n"
        f"assert main(['--home', {str(tmp_path)!r}, 'config', 'get', 'gateway.port']) == 0\n"
        "print('trio_gateway.channels.registry' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["18789", str(loads)]
