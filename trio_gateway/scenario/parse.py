"""Reading a scenario file (SPEC 9): TOML in, a checked `Scenario` out, or a `ScenarioError`
naming the file, the line and the key."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from trio_gateway.channels import registry as channel_registry
from trio_gateway.errors import ConfigError
from trio_gateway.policy import codec
from trio_gateway.policy import config as cfg
from trio_gateway.scenario.expect import EXPECT_TYPES
from trio_gateway.scenario.format import (
    ACTION_TYPES,
    Action,
    ChannelSpec,
    DropConnection,
    Inbound,
    InjectDeliveries,
    Scenario,
    ScenarioError,
    ScenarioMeta,
    StartSession,
)
from trio_gateway.sim.fake_channels import LISTENING_FAKES
from trio_gateway.sim.faults import Faults
from trio_gateway.sim.harness import ModelSpec, fake_account

_TOP_KEYS = ("scenario", "config", "model", "channels", "faults", "action", "expect")


@attrs.frozen
class _Lines:
    """Where things are in the file, so an error can name a line."""

    text: str

    def header(self, name: str, index: int | None = None) -> int | None:
        pattern = rf"^\s*\[\[\s*{re.escape(name)}\s*\]\]" if index is not None else rf"^\s*\[\s*{re.escape(name)}\s*\]"
        hits = [n for n, line in enumerate(self.text.splitlines(), 1) if re.match(pattern, line)]
        if index is None:
            return hits[0] if hits else None
        return hits[index] if index < len(hits) else None


def _fail(source: str, line: int | None, path: str, what: str) -> ScenarioError:
    where = f"{source}: line {line}" if line is not None else source
    return ScenarioError(f"{where}: {path}: {what}")


def _structure(raw: object, cls: type[Any], source: str, line: int | None, path: str) -> Any:
    try:
        return codec.structure_input(raw, cls)
    except ConfigError as exc:
        inner = "" if exc.path == "(top level)" else f".{exc.path}"
        raise _fail(source, line, f"{path}{inner}", exc.what) from None


def _typed_list(
    raw: object, table: str, types: Mapping[str, type[Any]], lines: _Lines, source: str
) -> Iterator[tuple[Any, int | None]]:
    if not isinstance(raw, list):
        raise _fail(source, lines.header(table), table, f"must be [[{table}]] entries")
    for i, item in enumerate(raw):
        line = lines.header(table, i)
        path = f"{table}[{i}]"
        if not isinstance(item, dict):
            raise _fail(source, line, path, "must be a table")
        kind = item.get("type")
        if not isinstance(kind, str) or kind not in types:
            raise _fail(source, line, f"{path}.type", f"expected one of {', '.join(types)}, got {json.dumps(kind)}")
        body = {k: v for k, v in item.items() if k != "type"}
        yield _structure(body, types[kind], source, line, path), line


def _merge(into: dict[str, Any], key: str, value: Any) -> None:
    """Dotted keys and nested tables both allowed in `[config]`; tables merge, values replace."""
    head, _, rest = key.partition(".")
    if rest:
        child = into.setdefault(head, {})
        if not isinstance(child, dict):
            raise ConfigError(head, "is not a table; cannot set a key inside it")
        _merge(child, rest, value)
    elif isinstance(value, dict) and isinstance(into.get(head), dict):
        for k, v in value.items():
            _merge(into[head], k, v)
    else:
        into[head] = value


def _config(raw: object, channels: dict[str, ChannelSpec], lines: _Lines, source: str) -> cfg.Config:
    if not isinstance(raw, dict):
        raise _fail(source, lines.header("config"), "config", "must be a table")
    merged: dict[str, Any] = {}
    try:
        for name, spec in channels.items():
            if name != "console":  # console has no accounts: it writes a file
                merged.setdefault("channels", {})[name] = {"accounts": {a: fake_account(name) for a in spec.accounts}}
        for key, value in raw.items():
            _merge(merged, key, value)
        return cfg.parse(merged, channel_registry.account_kinds())
    except ConfigError as exc:
        raise _fail(source, lines.header("config"), f"config.{exc.path}", exc.what) from None


def _check_action(action: Action, line: int | None, source: str, path: str) -> None:
    if action.at < 0:
        raise _fail(source, line, f"{path}.at", "must be zero or more seconds")
    if isinstance(action, (StartSession, InjectDeliveries, Inbound)) and action.count < 1:
        raise _fail(source, line, f"{path}.count", "must be at least 1")
    if isinstance(action, (Inbound, DropConnection)) and action.channel not in LISTENING_FAKES:
        raise _fail(source, line, f"{path}.channel", f"no inbound fake; known: {', '.join(LISTENING_FAKES)}")
    timeout = getattr(action, "timeout_seconds", None)
    if timeout is not None and not timeout > 0:
        raise _fail(source, line, f"{path}.timeoutSeconds", "must be a positive number")


def _channels(raw: object, lines: _Lines, source: str) -> dict[str, ChannelSpec]:
    if not isinstance(raw, dict):
        raise _fail(source, lines.header("channels"), "channels", "must be a table of [channels.NAME]")
    out: dict[str, ChannelSpec] = {}
    for name, body in raw.items():
        line = lines.header(f"channels.{name}") or lines.header(f'channels."{name}"')
        if channel_registry.kind_of(name) is None:
            known = ", ".join(channel_registry.BY_NAME)
            raise _fail(source, line, f"channels.{name}", f"unknown channel; known: {known}")
        spec: ChannelSpec = _structure(body, ChannelSpec, source, line, f"channels.{name}")
        if name == "console" and (spec.mode != "accept" or spec.delay_seconds > 0):
            # It appends to a local file: there is no server whose answers could be scripted.
            raise _fail(source, line, "channels.console.mode", "console has no fake server; only accept")
        out[name] = spec
    return out


def parse_text(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and check a scenario file; raises `ScenarioError` naming the line and key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{source}: not valid TOML: {exc}") from None
    lines = _Lines(text)
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise _fail(source, lines.header(unknown[0]), unknown[0], f"unknown table; known: {', '.join(_TOP_KEYS)}")
    meta = _structure(raw.get("scenario", {}), ScenarioMeta, source, lines.header("scenario"), "scenario")
    model = _structure(raw.get("model", {}), ModelSpec, source, lines.header("model"), "model")
    channels = _channels(raw.get("channels", {}), lines, source)
    config = _config(raw.get("config", {}), channels, lines, source)
    actions: list[Action] = []
    for i, (action, line) in enumerate(_typed_list(raw.get("action", []), "action", ACTION_TYPES, lines, source)):
        _check_action(action, line, source, f"action[{i}]")
        actions.append(action)
    expects = [e for e, _ in _typed_list(raw.get("expect", []), "expect", EXPECT_TYPES, lines, source)]
    if meta.duration_seconds <= 0:
        raise _fail(source, lines.header("scenario"), "scenario.durationSeconds", "must be a positive number")
    faults = _structure(raw.get("faults", {}), Faults, source, lines.header("faults"), "faults")
    if faults.until_seconds is not None and faults.until_seconds < faults.from_seconds:
        raise _fail(source, lines.header("faults"), "faults.untilSeconds", "must not be before fromSeconds")
    return Scenario(meta, config, model, channels, sorted(actions, key=lambda a: a.at), expects, source, faults)


def load(path: Path) -> Scenario:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not valid UTF-8 (byte {exc.start})") from None
    return parse_text(text, str(path))


def describe_file(path: Path) -> str:
    """The first line of a scenario file's leading comment: what incident it rehearses."""
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except OSError:
        return ""
    return first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
