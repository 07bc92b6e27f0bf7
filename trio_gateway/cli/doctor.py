"""`trio-gateway doctor` (SPEC 4): one line per check, exit 1 when any check failed.

Checks the home, the config, the secrets it names, the admin token, the running gateway (or
the port a new one would take), and that each configured upstream (channel accounts and model
endpoints) answers HTTP at all. Read-only: it creates nothing and prints no secret, only the
names of the variables that should hold them.
"""

from __future__ import annotations

import argparse
import os
import socket
import stat
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from trio_gateway.errors import GatewayError
from trio_gateway.storage.home import Home

if TYPE_CHECKING:
    from trio_gateway.cli import Context
    from trio_gateway.policy.config import Config

Verdict = Literal["ok", "warn", "FAIL"]
_REACH_TIMEOUT_SECONDS = 3.0


@attrs.frozen
class Check:
    verdict: Verdict
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<4}  {self.name:<10}  {self.detail}"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--offline", action="store_true", help="skip the upstream reachability checks")
    parser.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace, ctx: Context) -> int:
    failed = False
    for check in _diagnose(ctx.home, os.environ, reach=None if args.offline else _reachable):
        print(check.line(), flush=True)
        failed |= check.verdict == "FAIL"
    return 1 if failed else 0


def _diagnose(home: Home, env: Mapping[str, str], *, reach: Callable[[str], str | None] | None) -> Iterator[Check]:
    yield _home(home)
    config, raw = _config(home)
    yield config
    if raw is None:
        return
    yield from _secrets(raw, env)
    yield _token(home, env)
    from trio_gateway.channels.registry import account_kinds
    from trio_gateway.policy import config as cfg

    parsed = cfg.parse(raw, account_kinds())
    yield _gateway_or_port(home, parsed)
    if reach is not None:
        yield from _upstreams(parsed, reach)


def _home(home: Home) -> Check:
    if not home.root.is_dir():
        return Check("warn", "home", f"{home.root} does not exist yet (gateway start creates it; mistyped --home?)")
    if not os.access(home.root, os.W_OK | os.X_OK):
        return Check("FAIL", "home", f"{home.root} is not writable by this user")
    return Check("ok", "home", str(home.root))


def _config(home: Home) -> tuple[Check, dict[str, Any] | None]:
    from trio_gateway.channels.registry import load_config
    from trio_gateway.storage import config_file

    path = home.config_path
    try:
        raw = config_file.read_raw(path)
        load_config(path)
    except GatewayError as exc:
        return Check("FAIL", "config", f"{exc.name}: {exc}"), None
    detail = f"{path} is valid" if path.exists() else f"{path} absent: the built-in defaults"
    return Check("ok", "config", detail), raw


def _secrets(raw: Mapping[str, Any], env: Mapping[str, str]) -> Iterator[Check]:
    from trio_gateway.policy.env_check import missing_secrets, named_secrets

    named = list(named_secrets(raw))
    missing = missing_secrets(raw, env)
    for secret in missing:
        yield Check("FAIL", "secret", f"{secret.variable} is not set (named by {secret.path})")
    if not missing:
        yield Check("ok", "secrets", f"{len(named)} named, all set" if named else "none named")


def _token(home: Home, env: Mapping[str, str]) -> Check:
    from trio_gateway.errors import ConfigError
    from trio_gateway.storage.home import read_token, token_path

    path = token_path(home.token_path, env)
    try:
        token = read_token(path)  # refuses a token file others could read or swap
    except ConfigError as exc:
        return Check("FAIL", "token", str(exc))
    if token is None:
        return Check("warn", "token", f"{path} missing (made at the first start on loopback; `token create`)")
    return Check("ok", "token", f"{path} (mode {stat.S_IMODE(path.stat().st_mode):04o})")


def _gateway_or_port(home: Home, config: Config) -> Check:
    from trio_gateway.cli.client import Target

    try:
        target = Target.find(home)
    except GatewayError:
        return _port(config.gateway.bind, config.gateway.port)
    return Check(
        "ok", "gateway", f"running: pid {target.pid}, {target.state}, generation {target.generation}, {target.url}"
    )


def _port(bind: str, port: int) -> Check:
    if port == 0:
        return Check("ok", "port", "0: any free port")
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind.strip("[]"), port))
        except OSError as exc:
            return Check("FAIL", "port", f"cannot listen on {bind}:{port}: {exc.strerror or exc}")
    return Check("ok", "port", f"{bind}:{port} is free (no gateway running)")


def _upstreams(config: Config, reach: Callable[[str], str | None]) -> Iterator[Check]:
    targets = [
        (f"channels.{c}.accounts.{a}", acct.base_url)
        for c, s in config.channels.items()
        for a, acct in s.accounts.items()
    ]
    targets += [(f"models.{name}", m.base_url) for name, m in config.models.items()]
    for where, url in targets:
        if not url:
            continue
        problem = reach(url)
        if problem is None:
            yield Check("ok", "upstream", f"{where}: {url} answers")
        else:
            yield Check("FAIL", "upstream", f"{where}: {url} {problem}")


def _reachable(url: str) -> str | None:
    """None when `url` answers HTTP at all (any status: reachable is the question), else why not.
    The standard library's client: a one-off probe from the CLI, no connection pool to keep."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=_REACH_TIMEOUT_SECONDS):
            return None
    except urllib.error.HTTPError:
        return None  # an HTTP answer, whatever its status: the upstream is there
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"unreachable: {reason}"
