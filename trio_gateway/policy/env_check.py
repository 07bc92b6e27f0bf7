"""The secrets a configuration names, and which of them the environment lacks.

Secrets are never in `gateway.json`, only the names of the environment variables holding them
(SPEC 3): every key spelled `...Env` with a string value, and each value of a mapping under such
a key (`"headersEnv": {"Authorization": "SEARCH_AUTH"}`). Read from the raw file, so a section
added later (a new channel's `appTokenEnv`, `cluster.dsnEnv`) is checked without a change here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs


@attrs.frozen
class NamedSecret:
    path: str  # `channels.feishu.accounts.bot.appSecretEnv`
    variable: str  # `FEISHU_APP_SECRET`


def named_secrets(raw: Mapping[str, Any], prefix: str = "") -> Iterator[NamedSecret]:
    for key, value in raw.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if str(key).endswith("Env") and isinstance(value, str) and value:
            yield NamedSecret(path, value)
        elif str(key).endswith("Env") and isinstance(value, Mapping):
            for inner, name in value.items():
                if isinstance(name, str) and name:
                    yield NamedSecret(f"{path}.{inner}", name)
        elif isinstance(value, Mapping):
            yield from named_secrets(value, path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    yield from named_secrets(item, f"{path}[{i}]")


def missing_secrets(raw: Mapping[str, Any], env: Mapping[str, str]) -> list[NamedSecret]:
    return [s for s in named_secrets(raw) if not env.get(s.variable)]
