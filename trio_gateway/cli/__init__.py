"""`trio-gateway [--home DIR] [--log-format text|json] COMMAND ...` (SPEC 4).

This module only parses and dispatches, and it is cheap to import: the command groups are a
static table (name and one-line help), and only the group being run is imported, as
`trio_gateway.cli.<group>`, which adds its commands with `register(parser)`. So `gateway status`
loads argparse and an HTTP client, never the server, hypercorn, the scenario runner or the
test fakes (tests/test_cli_lazy.py pins that). Keep heavy imports out of this module and inside
the handlers of a group whose other commands are light (`gateway start` imports the server).

Every handler returns an exit code. A `GatewayError` anywhere becomes `ErrorName: message` on
stderr and that error's exit code; a closed stdout (`... | head`) ends the command quietly.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from trio_gateway.errors import GatewayError, UsageError
from trio_gateway.policy import strict_json
from trio_gateway.storage.home import Home
from trio_gateway.version import __version__

if TYPE_CHECKING:
    from trio_gateway.log import LogFormat

# name -> help. The module `trio_gateway.cli.<name>` defines `register(parser)`.
GROUPS: dict[str, str] = {
    "gateway": "run and control the gateway",
    "config": "read, change and check gateway.json",
    "session": "start, list and abort sessions",
    "delivery": "inspect and repair the delivery queue",
    "scenario": "rehearse restarts on a virtual clock",
    "logs": "print the gateway's log (read-only)",
    "doctor": "check home, config, secrets, token, port and upstreams; one line each",
    "token": "the admin token (token create: for a gateway on a non-loopback address)",
    "dashboard": "print the Control UI's URL with a one-time login code",
    "completion": 'print a shell completion script: eval "$(trio-gateway completion bash)"',
    "channels": "listening channels: state per account, resume a paused one",
    "cluster": "the nodes sharing the cluster database",
    "pairing": "who may talk to the agent: pending pairing codes, approve, revoke",
}
# Global options that take a value: skipped when looking for the group name in argv.
_VALUED_OPTIONS = ("--home", "--log-format")
# What a shell reports for a process killed by SIGPIPE: a reader that closed the pipe early.
BROKEN_PIPE_EXIT = 141


class Context(NamedTuple):  # not attrs: see home.py
    home: Home
    log_format: LogFormat


class _Formatter(argparse.HelpFormatter):
    """argparse builds a formatter for every `add_argument` (to check the metavar), and its
    default width comes from `shutil.get_terminal_size`, importing shutil (and bz2, lzma) on
    every command. The same width, from os."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width: int | None = None):
        super().__init__(prog, indent_increment, max_help_position, width or _terminal_width() - 2)


def _terminal_width() -> int:
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns if sys.__stdout__ else 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's own exit code is 2, as SPEC 4 wants for usage errors; keep its text but
        # in the contract's `ErrorName: message` form.
        self.print_usage(sys.stderr)
        sys.stderr.write(f"UsageError: {message}\n")
        raise SystemExit(2)


class PrintVersion(argparse.Action):
    """`--version`, printed directly: argparse's own version action builds a help formatter,
    which imports shutil (and with it bz2 and lzma) for the terminal width."""

    def __call__(self, parser: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        print(f"trio-gateway {__version__}")
        parser.exit()


def add_commands(parser: argparse.ArgumentParser, dest: str = "command") -> argparse._SubParsersAction[Any]:
    """The subcommands of `parser`. `prog` is given so argparse does not build a help formatter
    (and import shutil) just to compute it; no positional comes before a command here."""
    return parser.add_subparsers(
        dest=dest, required=True, metavar="COMMAND", parser_class=type(parser), prog=parser.prog
    )


def chosen_group(argv: Sequence[str]) -> str | None:
    """The command group named in `argv` (the first word that is not a global option or its
    value), or None when there is none or it is not a group (argparse then says so)."""
    words = iter(argv)
    for word in words:
        if word in _VALUED_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word if word in GROUPS else None
    return None


def hoist_globals(argv: Sequence[str]) -> list[str]:
    """SPEC 4: the global options are accepted after the command too. argparse only knows them
    before it, so move each (`--home DIR`, `--log-format=json`, ...) to the front; nothing after
    a literal `--` is touched."""
    front: list[str] = []
    rest: list[str] = []
    words = iter(argv)
    for word in words:
        if word == "--":
            rest.append(word)
            rest.extend(words)
        elif word in _VALUED_OPTIONS:
            front.append(word)
            value = next(words, None)
            if value is not None:
                front.append(value)
        elif word.split("=", 1)[0] in _VALUED_OPTIONS:
            front.append(word)
        else:
            rest.append(word)
    return front + rest


def seconds_argument(text: str, low: float, high: float) -> float:
    """A `--timeout S` value in `low..high` seconds; else argparse's usage error (exit 2):
    `nan`, `-1` or `1e-320` is a mistake to say, never a wait that ends at once."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not low <= seconds <= high:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from {low:g} to {high:g}, got {text}")
    return seconds


def build_parser(groups: Iterable[str] = GROUPS) -> argparse.ArgumentParser:
    """The whole command line, with the commands of `groups` filled in; the other groups are
    listed (for help and for argparse's "invalid choice") but not imported."""
    parser = _Parser(prog="trio-gateway", description="A gateway between AI agents and messaging channels.")
    parser.add_argument("--version", action=PrintVersion, nargs=0, help="print trio-gateway X.Y.Z and exit")
    parser.add_argument("--home", help="home directory (default: $TRIO_GATEWAY_HOME or ~/.trio-gateway)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    sub = add_commands(parser, dest="group")
    wanted = set(groups)
    for name, helptext in GROUPS.items():
        group = sub.add_parser(name, help=helptext, description=helptext)
        if name in wanted:
            importlib.import_module(f"trio_gateway.cli.{name}").register(group)
    return parser


# Arguments that name files: bytes that are not UTF-8 are a legal file name there.
_PATH_ARGS = frozenset({"home", "file", "dir"})


def check_text_args(args: argparse.Namespace) -> None:
    """Text arguments must be valid Unicode: argv bytes that are not UTF-8 arrive as lone
    surrogates, which every later write (session file, queue entry, log) would choke on."""
    for name, value in vars(args).items():
        why = strict_json.bad_text(value) if isinstance(value, str) and name not in _PATH_ARGS else None
        if why is not None:
            raise UsageError(f"{name}: {why}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = hoist_globals(sys.argv[1:] if argv is None else argv)
    group = chosen_group(argv)
    args = build_parser([group] if group else []).parse_args(argv)
    ctx = Context(Home.resolve(args.home), args.log_format)
    try:
        check_text_args(args)
        code: int = args.func(args, ctx)
    except GatewayError as exc:
        print(f"{exc.name}: {exc}", file=sys.stderr)
        for note in getattr(exc, "__notes__", ()):  # errors raised beside it (`errors.chosen`)
            print(f"  {note}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return code


def run() -> None:
    try:
        code = main()
        sys.stdout.flush()  # inside the try: a reader gone early shows up here, not at exit
    except BrokenPipeError:
        code = _stdout_closed()
    sys.exit(code)


def _stdout_closed() -> int:
    """The reader of stdout went away (`scenario list | head -3`): not an error worth a
    traceback. Point stdout at /dev/null so the interpreter's final flush stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_EXIT
