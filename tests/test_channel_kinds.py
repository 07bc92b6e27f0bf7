"""One file per platform (issue 11): adding a channel is its module `channels/<platform>.py`,
one entry in `registry.KINDS` and its fake in `sim/`. These tests pin that claim cheaply:

- every kind the registry lists is complete (an address rule; an adapter, per account or
  standalone; a default inbound mode it can actually listen with) and has a fake;
- no module outside the platform modules, the registry and `sim/` names a platform: read from
  the source with `ast`, a platform's name in a string literal, a name or an attribute (so an
  `if channel == "slack":` or an import of `channels.slack` anywhere else fails), docstrings and
  comments excepted (prose may give examples). The built-in `console` is not counted: the
  default config binds it on purpose.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import trio_gateway
from trio_gateway.channels import registry
from trio_gateway.channels.base import ChannelKind
from trio_gateway.policy.config import KNOWN_CHANNELS, AccountConfig
from trio_gateway.sim import fake_channels
from trio_gateway.sim.fake_channels import FakeChannels
from trio_gateway.sim.fake_platform import Rule

PACKAGE = Path(trio_gateway.__file__).parent
PLATFORM_WORDS = re.compile(r"feishu|lark|weixin|wechat|slack|discord|telegram", re.IGNORECASE)
PLATFORM_MODULES = {f"channels/{name}.py" for name in ("feishu", "weixin", "slack", "discord", "telegram")}

# Where a platform is still named outside its room, each with why. Empty is the goal.
ALLOWED: dict[str, str] = {
    # policy is pure and sits below channels, so it cannot ask the registry which names exist;
    # `test_config_knows_every_kind` keeps the two lists equal.
    "policy/config.py": "KNOWN_CHANNELS: the channel names gateway.json may use",
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


def test_kind_names_are_unique_and_the_config_knows_every_kind() -> None:
    names = [kind.name for kind in registry.KINDS]
    assert len(set(names)) == len(names)
    assert set(KNOWN_CHANNELS) == set(names), "a new kind's name goes in policy.config.KNOWN_CHANNELS too"


@pytest.mark.parametrize("kind", registry.KINDS, ids=lambda k: k.name)
def test_every_kind_is_complete(kind: ChannelKind) -> None:
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
