"""The providers this version speaks (`KINDS`): each one module under `models/`, one entry here
and one fake in `sim/` speaking its protocol. Everything about a provider is asked through its
`ModelKind`: `gateway.json`'s keys and rules (`model_keys()`, handed down to `policy.config`,
which names no provider) and its client (`build_model`).

`load_config` sits here because this is the lowest room that sees both kinds of kind: the
channel kinds (the room below) and the model kinds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from trio_gateway import upstream as http
from trio_gateway.errors import ConfigError
from trio_gateway.models import anthropic, echo, openai
from trio_gateway.models.base import Model, ModelKind
from trio_gateway.policy.config import Config, ModelConfig, ModelKeys
from trio_gateway.storage import config_file

KINDS: tuple[ModelKind, ...] = (echo.KIND, openai.KIND, anthropic.KIND)
BY_NAME: Mapping[str, ModelKind] = {kind.name: kind for kind in KINDS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def model_keys() -> Mapping[str, ModelKeys]:
    """What each provider's `models.<name>` entries may say, by name, for `policy.config`."""
    return {name: kind.keys for name, kind in BY_NAME.items()}


def build_model(
    config: ModelConfig,
    env: Mapping[str, str],
    transport: http.AsyncBaseTransport | None = None,
) -> Model:
    """The client for one `models.<name>` entry; `transport` replaces the network in tests."""
    kind = BY_NAME.get(config.kind)
    if kind is None:
        raise ConfigError("models", f"unknown provider {config.kind!r}; known: {', '.join(BY_NAME)}")
    return kind.open(config, env, transport)


def load_config(path: Path) -> Config:
    """`gateway.json` as every reader takes it (start, restart, the CLI): the file's strict
    parse (`storage.config_file`), told the channel and model kinds this version speaks."""
    # Imported here: the channel registry loads every platform module, which a reader of the
    # model kinds alone (`config get models...`) has no use for.
    from trio_gateway.channels.registry import account_kinds

    return config_file.load(path, account_kinds(), model_keys())
