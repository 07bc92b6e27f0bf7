"""One file per platform (issue 11): adding a channel is its module `channels/<platform>.py`,
one entry in `registry.KINDS` and its fake in `sim/`. These tests pin that claim cheaply:

- every kind the registry lists is complete (an address rule; an adapter, per account or
  standalone; a default inbound mode it can actually listen with) and has a fake;
- no module outside the platform modules, the registry and `sim/` names a platform: read from
  the source with `ast`, a platform's name in a string literal, a name or an attribute (so an
  `if channel == "slack":` or an import of `channels.slack` anywhere else fails), docstrings and
  comments excepted (prose may give examples). The built-in `console` is not counted: the
  default config binds it on purpose;
- a seventh platform made up here (`pigeon`: a kind and a fake) needs nothing but an entry in
  `registry.KINDS` and one in the fakes' `PLATFORMS`: gateway.json, the account check, the
  address rule, the harness's fake account and a scenario's `[channels.pigeon]` all take it.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import attrs
import pytest

import trio_gateway
from trio_gateway import scenario
from trio_gateway.channels import registry
from trio_gateway.channels.base import (
    AccountSpec,
    AddressRule,
    Channel,
    ChannelKind,
    Outcome,
    TokenAccount,
    account_as,
    require_base_url,
)
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError, DeliveryValidationError
from trio_gateway.policy.config import AccountConfig, AccountKind
from trio_gateway.sim import fake_channels
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.fake_platform import FakeResponse, Json, PlatformFake, Rule
from trio_gateway.sim.harness import FAKE_BASE_URL, fake_account

PACKAGE = Path(trio_gateway.__file__).parent
PLATFORM_WORDS = re.compile(r"feishu|lark|weixin|wechat|slack|discord|telegram", re.IGNORECASE)
PLATFORM_MODULES = {f"channels/{name}.py" for name in ("feishu", "weixin", "slack", "discord", "telegram")}

# Where a platform is still named outside its room, each with why. Empty is the goal.
ALLOWED: dict[str, str] = {
    # The scenario file format's documented default for `[[action]] type = "inbound"`.
    "scenario/format.py": "Inbound.channel defaults to openclaw-weixin",
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def platform_mentions(path: Path) -> list[str]:
    """`line: what` for every platform name in the code of `path` (not its docstrings)."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            text = node.value
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.alias):
            text = node.name
        elif isinstance(node, ast.ImportFrom):
            text = node.module
        if text and PLATFORM_WORDS.search(text):
            found.append(f"{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return found


def _outside_the_platform_rooms() -> list[Path]:
    return [
        path
        for path in sorted(PACKAGE.rglob("*.py"))
        if (rel := path.relative_to(PACKAGE).as_posix()) not in PLATFORM_MODULES
        and rel != "channels/registry.py"
        and not rel.startswith("sim/")
    ]


def test_no_module_outside_the_platform_rooms_names_a_platform() -> None:
    mentions = {
        rel: found
        for path in _outside_the_platform_rooms()
        if (found := platform_mentions(path)) and (rel := path.relative_to(PACKAGE).as_posix()) not in ALLOWED
    }
    assert mentions == {}, "ask the platform's ChannelKind (channels/registry.py) instead of naming it"


def test_every_allowed_exception_is_still_needed() -> None:
    for rel in ALLOWED:
        assert platform_mentions(PACKAGE / rel), f"{rel} names no platform any more: take it out of ALLOWED"


def test_the_scan_sees_a_platform_branch_and_import(tmp_path: Path) -> None:
    # The check itself must be able to fail: a branch on a platform's name is what it is for.
    path = tmp_path / "probe.py"
    path.write_text(
        'from trio_gateway.channels import feishu\n\ndef f(c):\n    """Not slack."""\n    return c == "slack"\n'
    )
    assert sorted(platform_mentions(path)) == ["1: 'feishu'", "5: 'slack'"]


def test_kind_names_are_unique_and_gateway_json_takes_every_kind(tmp_path: Path) -> None:
    names = [kind.name for kind in registry.KINDS]
    assert len(set(names)) == len(names)
    assert tuple(names) == registry.NAMES
    # The names gateway.json may use are the registry's, no list of its own elsewhere.
    raw = {"channels": {name: {} for name in names}}
    (tmp_path / "gateway.json").write_text(json.dumps(raw))
    assert list(registry.load_config(tmp_path / "gateway.json").channels) == names


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda k: k.name)
def test_every_kind_is_complete(kind: ChannelKind) -> None:
    assert_complete(kind)


def assert_complete(kind: ChannelKind) -> None:
    assert (kind.open_sender is None) != (kind.open_standalone is None), "an adapter per account, or one standalone"
    mode = kind.default_mode(AccountConfig())
    assert mode in ("off", "webhook") or mode in kind.listeners, f"default mode {mode!r} has no listener"
    if kind.webhook is None:
        assert mode != "webhook"
    if kind.needs_account:
        assert kind.classify is not None, "a platform with an HTTP send API classifies its answers"


@pytest.mark.parametrize("kind", [k for k in registry.KINDS if k.needs_account], ids=lambda k: k.name)
def test_every_platform_has_a_fake(kind: ChannelKind) -> None:
    assert kind.name in fake_channels.CHANNELS
    fake = FakeChannels().platform(kind.name)  # its `fake_<platform>.py`
    assert fake.__module__ == f"trio_gateway.sim.fake_{kind.name.split('-')[-1]}"
    assert "send" in [op for _, op in fake.routes]
    # The fake answers in the platform's own error forms, which its classifier understands.
    assert kind.classify is not None
    rejected = fake.rejection(Rule("reject", 1))
    assert kind.classify(rejected.status, rejected.body, rejected.headers).kind in ("permanent", "paused")
    limited = fake.rate_limited(Rule("rate_limit", 1, retry_after=2.0))
    assert kind.classify(limited.status, limited.body, limited.headers).kind == "rate_limited"
    assert limited.status == 429


# --- a seventh platform, made up here: what adding one takes --------------------------------------


def _pigeon_classify(status: int, body: object, headers: object) -> Outcome:
    if status == 429:
        return Outcome("rate_limited", "slow down")
    return Outcome("ok") if status < 300 else Outcome("permanent", f"HTTP {status}")


def _pigeon_sender(spec: AccountSpec) -> Channel:
    raise AssertionError("not opened here")


LOFT = AddressRule(re.compile(r"loft-[0-9]+"), "loft-<number>")


@attrs.frozen
class PigeonAccount(TokenAccount):
    """Its accounts' own key, besides the bot token: the loft its birds fly home to."""

    home_loft: str | None = None


def _pigeon_account_rules(path: str, account: AccountConfig) -> None:
    require_base_url(path, account)
    loft = account_as(PigeonAccount, account).home_loft
    if loft is not None and not LOFT.pattern.fullmatch(loft):
        raise ConfigError(f"{path}.homeLoft", f"must look like loft-<number>, got {loft!r}")


# Its module (`channels/pigeon.py`): an address rule, its accounts' keys and rules, its
# replies' classifier, its sender.
PIGEON = ChannelKind(
    name="pigeon",
    address=LOFT,
    accounts=AccountKind(PigeonAccount, _pigeon_account_rules),
    classify=_pigeon_classify,
    open_sender=_pigeon_sender,
)


# Its fake (`sim/fake_pigeon.py`): its paths and its error forms; a bot token, as most platforms.
@attrs.define
class PigeonFake(PlatformFake):
    name = "pigeon"
    routes = ((re.compile(r"/coo$"), "send"),)
    reject_default = (404, "no_loft", "no such loft")

    def error_body(self, code: Json, message: str) -> Json:
        return {"error": code, "message": message}

    def rate_limited(self, rule: Rule) -> FakeResponse:
        return FakeResponse(429, self.error_body("flock", "too many birds"), {})


@pytest.fixture
def seventh(monkeypatch: pytest.MonkeyPatch) -> ChannelKind:
    """The registry list and the fakes' list, each with one entry more: nothing else changes."""
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, PIGEON))
    monkeypatch.setattr(registry, "BY_NAME", {**registry.BY_NAME, PIGEON.name: PIGEON})
    monkeypatch.setattr(registry, "NAMES", (*registry.NAMES, PIGEON.name))
    monkeypatch.setattr(fake_channels, "PLATFORMS", (*fake_channels.PLATFORMS, PigeonFake))
    return PIGEON


def _pigeon_config(tmp_path: Path, **keys: str) -> Path:
    raw = {
        "channels": {"pigeon": {"accounts": {"a": {**fake_account("pigeon"), **keys}}}},
        "agents": {"main": {"channels": ["pigeon"]}},
    }
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(raw))
    return path


def test_a_seventh_kind_is_its_module_an_entry_in_the_registry_and_a_fake(seventh: ChannelKind, tmp_path: Path) -> None:
    assert_complete(seventh)
    # Its fake names the account's secrets; the harness asks it, with no branch of its own.
    # Anyone may talk to a fake's bot (SPEC 15's `pairing` default is for real accounts).
    assert fake_account("pigeon") == {"baseUrl": FAKE_BASE_URL, "dmPolicy": "open", "tokenEnv": "FAKE_PIGEON_TOKEN"}
    # gateway.json takes it (the names are the registry's), and its accounts are checked by it.
    config = registry.load_config(_pigeon_config(tmp_path))
    registry.check(config, {"FAKE_PIGEON_TOKEN": "t"})
    with pytest.raises(ConfigError, match=r"FAKE_PIGEON_TOKEN"):
        registry.check(config, {})
    # Its fake answers in the forms its classifier reads.
    fake = FakeChannels().platform("pigeon")
    assert seventh.classify is not None
    limited = fake.rate_limited(Rule("rate_limit", 1))
    assert seventh.classify(limited.status, limited.body, limited.headers).kind == "rate_limited"
    rejected = fake.rejection(Rule("reject", 1))
    assert seventh.classify(rejected.status, rejected.body, rejected.headers).kind == "permanent"
    # Deliveries are addressed by its rule.
    assert registry.check_address("pigeon", "loft-7") is None
    with pytest.raises(DeliveryValidationError):
        registry.check_address("pigeon", "attic")
    # A scenario's `[channels.pigeon]` gets a fake account from the fake.
    parsed = scenario.parse_text('[channels.pigeon]\naccounts = ["a"]\n')
    assert parsed.config.channels["pigeon"].accounts["a"].token_env == "FAKE_PIGEON_TOKEN"


def test_a_seventh_kind_declares_its_own_account_key_and_only_it_takes_it(
    seventh: ChannelKind, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Config learns a kind's account keys and rules from the registry: pigeon's `homeLoft` is
    read for pigeon, checked by pigeon's rule, and an unknown key under every other kind."""
    path = _pigeon_config(tmp_path, homeLoft="loft-3")
    account = registry.load_config(path).channels["pigeon"].accounts["a"]
    assert isinstance(account, PigeonAccount)
    assert (account.home_loft, account.token_env, account.dm_policy) == ("loft-3", "FAKE_PIGEON_TOKEN", "open")
    with pytest.raises(
        ConfigError, match=r"^channels\.pigeon\.accounts\.a\.homeLoft: must look like loft-<number>, got 'attic'$"
    ):
        registry.load_config(_pigeon_config(tmp_path, homeLoft="attic"))
    for other in registry.NAMES[:-1]:
        raw = {"channels": {other: {"accounts": {"x": {"baseUrl": FAKE_BASE_URL, "homeLoft": "loft-3"}}}}}
        path.write_text(json.dumps(raw))
        with pytest.raises(ConfigError) as bad:
            registry.load_config(path)
        assert str(bad.value) == f"channels.{other}.accounts.x: unknown key(s): homeLoft"
    # The CLI asks the same registry: `config set` takes it for pigeon, and refuses it elsewhere.
    home = tmp_path / "home"
    cli = ["--home", str(home), "config", "set"]
    assert main([*cli, "channels.pigeon.accounts.a", json.dumps(fake_account("pigeon"))]) == 0
    assert main([*cli, "channels.pigeon.accounts.a.homeLoft", "loft-9"]) == 0
    assert main(["--home", str(home), "config", "get", "channels.pigeon.accounts.a.homeLoft"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "loft-9"
    assert main([*cli, "channels.telegram.accounts.t", json.dumps({"baseUrl": FAKE_BASE_URL, "homeLoft": "x"})]) == 2
    assert "channels.telegram.accounts.t: unknown key(s): homeLoft" in capsys.readouterr().err


def test_without_its_registry_entry_a_seventh_channel_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_channels, "PLATFORMS", (*fake_channels.PLATFORMS, PigeonFake))
    with pytest.raises(ConfigError, match=r"^channels\.pigeon: unknown channel; known: console, feishu, "):
        registry.load_config(_pigeon_config(tmp_path))
