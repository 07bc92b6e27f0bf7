"""`trio-gateway [--home DIR] [--log-format text|json] COMMAND ...` (SPEC 4).

This module only parses and dispatches; each command group lives in its own `cli_*` module
with a `register(subparsers)` function, and every handler returns an exit code. A
`GatewayError` anywhere becomes `ErrorName: message` on stderr and that error's exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import attrs

from trio_gateway import cli_cluster, cli_config, cli_delivery, cli_gateway, cli_scenario, cli_session
from trio_gateway.errors import GatewayError
from trio_gateway.home import Home
from trio_gateway.log import LogFormat


@attrs.frozen
class Context:
    home: Home
    log_format: LogFormat


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own exit code is 2, as SPEC 4 wants for usage errors; keep its text but
        # in the contract's `ErrorName: message` form.
        self.print_usage(sys.stderr)
        sys.stderr.write(f"UsageError: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="trio-gateway", description="A gateway between AI agents and messaging channels.")
    parser.add_argument("--home", help="home directory (default: $TRIO_GATEWAY_HOME or ~/.trio-gateway)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND", parser_class=_Parser)
    for module in (cli_gateway, cli_config, cli_session, cli_delivery, cli_scenario, cli_cluster):
        module.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Context(Home.resolve(args.home), args.log_format)
    try:
        code: int = args.func(args, ctx)
    except GatewayError as exc:
        print(f"{exc.name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    sys.exit(main())
