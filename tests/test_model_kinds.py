"""One module per provider (issue 22): adding a model kind is its module `models/<provider>.py`,
one entry in `models.registry.KINDS` and its fake in `sim/`. Pinned here as
`test_channel_kinds.py` pins it for channels:

- every kind the registry lists can be opened, and every HTTP kind has a fake speaking it;
- no module outside the provider modules, the registry and `sim/` names a provider in code
  (docstrings and comments excepted), but SPEC 3's default (`policy/config_schema.py`);
- a provider made up here (`carrier`: its own key and rule, an HTTP client for a made-up
  protocol, and a fake speaking it) needs nothing but an entry in the registry and one in the
  fakes' `FAKES`: gateway.json, `config set`, the model's check, and a turn in the harness
  (the real client over its fake, usage counted) all take it.
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
from trio_gateway.channels.registry import account_kinds
from trio_gateway.cli import main
from trio_gateway.errors import ConfigError
from trio_gateway.http import views
from trio_gateway.models import registry
from trio_gateway.models.base import Message, ModelKind, ModelReply, Progress, Usage
from trio_gateway.models.endpoint import Endpoint
from trio_gateway.policy import config as cfg
from trio_gateway.policy.config import ModelConfig, ModelKeys
from trio_gateway.policy.origin import Origin
from trio_gateway.sim import fake_models
from trio_gateway.sim.fake_model import FakeModel, Wire
from trio_gateway.sim.fake_models import FAKES
from trio_gateway.sim.harness import Harness

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
#
# Its module (`models/carrier.py`): its own key and rule, and a client for its made-up protocol
# (`POST /say` {"region", "text"} -> {"said", "tokens"}) on the shared HTTP side (`Endpoint`).


@attrs.frozen
class CarrierConfig(ModelConfig):
    """The made-up provider's own key."""

    region: str = "eu"


def _carrier_rules(path: str, model: ModelConfig) -> None:
    assert isinstance(model, CarrierConfig)
    if model.region not in ("eu", "us"):
        raise ConfigError(f"{path}.region", f"must be eu or us, got {model.region!r}")


class CarrierModel:
    def __init__(self, config: CarrierConfig, env: Mapping[str, str], transport: Any) -> None:
        self._config = config
        self._endpoint = Endpoint(config, env, transport, lambda key: {"x-carrier-key": key})

    async def complete(self, messages: list[Message], tools: list[dict[str, Any]], progress: Progress) -> ModelReply:
        body = {"region": self._config.region, "text": messages[-1]["content"]}
        url = f"{self._config.base_url}/say"
        return await self._endpoint.call(url, body, progress, self._read)

    @staticmethod
    async def _read(response: http.Response, progress: Progress) -> ModelReply:
        said = json.loads(await response.aread())
        progress("model_call:first_token")
        return ModelReply(said["said"], usage=Usage(output=said["tokens"]))

    async def aclose(self) -> None:
        await self._endpoint.aclose()


def _open_carrier(config: ModelConfig, env: Mapping[str, str], transport: http.AsyncBaseTransport | None) -> Any:
    assert isinstance(config, CarrierConfig)
    return CarrierModel(config, env, transport)


CARRIER = ModelKind("carrier", open=_open_carrier, keys=ModelKeys(CarrierConfig, _carrier_rules))


# Its fake (`sim/fake_carrier.py`): its protocol on the fake model server's behaviour core.
class CarrierWire:
    path = "/say"
    overloaded_status = 503

    def conversation(self, body: dict[str, Any]) -> tuple[list[Message], list[dict[str, Any]]]:
        return [{"role": "user", "content": f"[{body['region']}] {body['text']}"}], []

    def completion(self, reply: ModelReply, model: str) -> bytes:
        return json.dumps({"said": f"carrier{reply.text}", "tokens": 3}).encode()

    def stream(self, reply: ModelReply, model: str) -> list[bytes]:
        return [self.completion(reply, model)]

    def error(self, status: int) -> bytes:
        return json.dumps({"error": status}).encode()

    def keep_alive(self) -> bytes:
        return b" "

    def stream_error(self) -> bytes:
        return b""


@attrs.define(eq=False)
class CarrierFake(FakeModel):
    wire: Wire = attrs.Factory(CarrierWire)


@pytest.fixture
def carrier(monkeypatch: pytest.MonkeyPatch) -> ModelKind:
    monkeypatch.setattr(registry, "KINDS", (*registry.KINDS, CARRIER))
    monkeypatch.setattr(registry, "BY_NAME", {**registry.BY_NAME, CARRIER.name: CARRIER})
    monkeypatch.setattr(registry, "NAMES", (*registry.NAMES, CARRIER.name))
    monkeypatch.setattr(fake_models, "FAKES", {**fake_models.FAKES, CARRIER.name: CarrierFake})
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


async def test_a_turn_runs_on_a_made_up_provider_against_its_fake(carrier: ModelKind, tmp_path: Path) -> None:
    """The harness (scenarios, fixtures) finds the made-up provider's fake by its name and runs
    the made-up client over it, usage and all."""
    raw = {"models": {"c": {"provider": "carrier", "baseUrl": "http://carrier.invalid", "region": "us"}}}
    config = cfg.parse({**raw, "agents": {"main": {"model": "c"}}}, account_kinds(), registry.model_keys())
    harness = Harness.build(tmp_path / "home", config)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(harness.gateway.serve)
            await harness.gateway.submit(agent_id="main", origin=Origin("console", "ops"), prompt="hi")
            [delivered] = await harness.wait_delivered(1, "console")
            status = views.status(harness.gateway)
            harness.gateway.request_drain("stop")
    assert delivered.text == "carrier[us] hi"
    assert harness.models["c"].requests[-1].path == "/say"
    assert status["models"]["tokensByModel"]["c"]["output"] == 3
