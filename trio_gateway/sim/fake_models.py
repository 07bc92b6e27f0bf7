"""Every provider's fake, by provider name (SPEC 16: one fake per model kind, speaking its
protocol, streaming included), and the set of fakes one in-process gateway talks to.

The harness (scenarios, the pytest fixtures) answers a model entry whose provider has a fake
with the real client over that fake's in-process transport, so a scenario exercises the real
Anthropic and OpenAI clients, the stall watchdog on real streams, and fallbacks; the embedded
`echo` provider needs no fake.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from trio_gateway.policy.config import Config, ModelConfig
from trio_gateway.sim.fake_anthropic import FakeAnthropic
from trio_gateway.sim.fake_model import FakeBehaviour, FakeModel, Mode

# A provider's fake server, by the provider's name in `models.<name>.provider`.
FAKES: Mapping[str, type[FakeModel]] = {"openai": FakeModel, "anthropic": FakeAnthropic}


@attrs.define
class FakeModels:
    """One fake server per model entry (`models.<name>`), made when first asked for."""

    # What each entry's fake does at first, by model name (`[model.upstreams]` in a scenario).
    modes: Mapping[str, Mode] = attrs.Factory(dict)
    by_name: dict[str, FakeModel] = attrs.Factory(dict)

    def for_entry(self, config: Config, model: ModelConfig) -> FakeModel | None:
        """The fake for this entry of `config`, or None when its provider has none."""
        cls = FAKES.get(model.kind)
        name = next((n for n, m in config.models.items() if m == model), None)
        if cls is None or name is None:
            return None
        if name not in self.by_name:
            self.by_name[name] = cls(FakeBehaviour(mode=self.modes.get(name, "echo")))
        return self.by_name[name]

    def __getitem__(self, name: str) -> FakeModel:
        return self.by_name[name]


def fake_keys(config: Config) -> dict[str, str]:
    """A value for every API key variable the config's models name."""
    return {m.api_key_env: f"fake-{name}-key" for name, m in config.models.items() if m.api_key_env}
