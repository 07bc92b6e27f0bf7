"""One module per provider (issue 22): adding a model kind is its module `models/<provider>.py`,
one entry in `models.registry.KINDS` and its fake in `sim/`. Pinned here as
`test_channel_kinds.py` pins it for channels:

- every kind the registry lists can be opened, and every HTTP kind has a fake speaking it;
- no module outside the provider modules, the registry and `sim/` names a provider in code
  (docstrings and comments excepted), but SPEC 3's default (`policy/config_schema.py`);
- a provider made up here (`carrier`: its own key and rule, a client) needs nothing but an
  entry in the registry: gateway.json, `config set`, the model's check and a turn all take it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import trio_gateway
from trio_gateway import upstream as http
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError
from trio_gateway.models import registry
from trio_gateway.models.base import Message, ModelKind, ModelReply, Progress
from trio_gateway.policy.config import ModelConfig, ModelKeys
from trio_gateway.policy.origin import Origin
from trio_gateway.sim.fake_models import FAKES
from trio_gateway.sim.runtime import build_gateway, quick_config

PACKAGE = Path(trio_gateway.__file__).parent
PROVIDER_WORDS = re.compile(r"openai|anthropic|claude", re.IGNORECASE)
PROVIDER_MODULES = {"models/openai.py", "models/anthropic.py", "models/registry.py", "models/__init__.py"}
# Where a provider is still named outside its room, each with why.
ALLOWED = {
    "policy/config_schema.py": "SPEC 3: a model with a baseUrl and no provider is openai",
    "policy/config_checks.py": "SPEC 3's default, said in the error for a model with neither",
    "__init__.py": "the public API exports the testing kit's fakes, FakeAnthropic among them",
    "testing/__init__.py": "the testing kit exports FakeAnthropic",
}


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def provider_mentions(path: Path) -> list[str]:
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
        if text and PROVIDER_WORDS.search(text):
            found.append(f"{getattr(node, 'lineno', '?')}: {text[:60]!r}")
    return found


def test_no_module_outside_the_provider_rooms_names_a_provider() -> None:
    mentions = {
        rel: found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (rel := path.relative_to(PACKAGE).as_posix()) not in PROVIDER_MODULES
        and not rel.startswith("sim/")
        and rel not in ALLOWED
        and (found := provider_mentions(path))
    }
    assert mentions == {}, "ask the provider's ModelKind (models/registry.py) instead of naming it"
    for rel in ALLOWED:
        assert provider_mentions(PACKAGE / rel), f"{rel} no longer names a provider: drop it from ALLOWED"


def test_every_http_kind_has_a_fake_and_every_kind_opens() -> None:
    assert set(FAKES) == set(registry.NAMES) - {"echo"}
    for kind in registry.KINDS:
        model = kind.open(ModelConfig(provider=kind.name, base_url="http://x.invalid", model="m"), {}, None)
        assert callable(model.complete)


# --- a provider made up here ----------------------------------------------------------------------


@attrs.frozen
class CarrierConfig(ModelConfig):
    """The made-up provider's own key."""

    region: str = "eu"


def _carrier_rules(path: str, model: ModelConfig) -> None:
    assert isinstance(model, CarrierConfig)
    if model.region not in ("eu", "us"):
        raise ConfigError(f"{path}.region", f"must be eu or us, got {model.region!r}")


@attrs.define
class CarrierModel:
    region: str

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        await trio.lowlevel.checkpoint()
        progress("model_call:first_token")
        return ModelReply(f"carrier[{self.region}]: {messages[-1]['content']}")

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


def _open_carrier(config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None) -> Any:
    assert isinstance(config, CarrierConfig)
    return CarrierModel(config.region)


CARRIER = ModelKind("carrier", open=_open_carrier, keys=ModelKeys(CarrierConfig, _carrier_rules))


@pytest.fixture
def carrier(monkeypatch: pytest.MonkeyPatch) -> ModelKind:
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, CARRIER))
    monkeypatch.setattr(registry, "BY_NAME", {**registry.BY_NAME, CARRIER.name: CARRIER})
    monkeypatch.setattr(registry, "NAMES", (*registry.NAMES, CARRIER.name))
    return CARRIER


def _write(tmp_path: Path, **entry: Any) -> Path:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"models": {"c": {"provider": "carrier", **entry}}, "agents": {"main": {"model": "c"}}}))
    return path


def test_a_made_up_provider_declares_its_own_key_and_only_it_takes_it(
    carrier: ModelKind, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = registry.load_config(_write(tmp_path, region="us")).models["c"]
    assert isinstance(model, CarrierConfig)
    assert model.region == "us"
    with pytest.raises(ConfigError, match=r"^models\.c\.region: must be eu or us, got 'mars'$"):
        registry.load_config(_write(tmp_path, region="mars"))
    for other in ("openai", "anthropic"):
        raw = {"models": {"x": {"provider": other, "baseUrl": "http://x.invalid", "model": "m", "region": "us"}}}
        (tmp_path / "gateway.json").write_text(json.dumps(raw))
        with pytest.raises(ConfigError, match=r"^models\.x: unknown key\(s\): region$"):
            registry.load_config(tmp_path / "gateway.json")
    # The CLI asks the same registry.
    cli = ["--home", str(tmp_path / "home"), "config"]
    assert main([*cli, "set", "models.c", json.dumps({"provider": "carrier"})]) == 0
    assert main([*cli, "set", "models.c.region", "us"]) == 0
    assert main([*cli, "get", "models.c.region"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "us"
    assert main([*cli, "set", "models.c.region", "mars"]) == 2


def test_without_its_registry_entry_a_made_up_provider_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"^models\.c\.provider: unknown provider 'carrier'; known: echo, openai, anthropic$"
    ):
        registry.load_config(_write(tmp_path))


async def test_a_turn_runs_on_a_made_up_provider(carrier: ModelKind, tmp_path: Path) -> None:
    config = quick_config(**{"models.c": {"provider": "carrier", "region": "us"}, "agents.main.model": "c"})
    notices: list[Any] = []
    gateway, _ = build_gateway(tmp_path, config, notices=notices)
    gateway.deps.model_factory = lambda mc: registry.build_model(mc, {})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.serve)
            await gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt="hi")
            await gateway.busy.wait_value(0)
            gateway.request_drain("stop")
    assert [n.text for n in notices] == ["carrier[us]: hi"]
