"""`trio-gateway scenario run FILE [--json]` and `scenario list` (SPEC 4, 9).

`run` exits 0 when every expectation held, 1 naming each one that failed, 2 for a file that
cannot be run (`ScenarioError` names the line and key). A bare name (`rapid-restarts`) is
looked up in the scenarios directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from trio_gateway import scenario
from trio_gateway.cli import add_commands

# The scenarios shipped beside the package (a source checkout or an editable install).
SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"


def register(parser: argparse.ArgumentParser) -> None:
    commands = add_commands(parser)
    run = commands.add_parser("run", help="run a scenario file and print its timeline")
    run.add_argument("file", help="a scenario .toml file, or the name of a shipped one")
    run.add_argument("--json", action="store_true", help="print a machine-readable result")
    run.set_defaults(func=_run)
    listing = commands.add_parser("list", help="list the scenarios in a directory")
    listing.add_argument("dir", nargs="?", help="default: ./scenarios, else the shipped ones")
    listing.set_defaults(func=_list)


def _scenario_dir(explicit: str | None) -> Path:
    if explicit is not None:
        return Path(explicit)
    here = Path("scenarios")
    return here if here.is_dir() else SHIPPED


def resolve(name: str) -> Path:
    path = Path(name)
    if path.exists() or path.suffix:
        return path
    for directory in (Path("scenarios"), SHIPPED):
        candidate = directory / f"{name}.toml"
        if candidate.exists():
            return candidate
    return path


def _run(args: argparse.Namespace, ctx: object) -> int:
    parsed = scenario.load(resolve(args.file))
    result = scenario.run(parsed)
    if args.json:
        print(json.dumps(result.to_json(), indent=2, default=str))
    else:
        print(scenario.render(result))
    for failure in result.failures():
        print(f"ExpectationFailed: {failure.expect}: {failure.detail}", file=sys.stderr)
    return 0 if result.passed else 1


def _list(args: argparse.Namespace, ctx: object) -> int:
    directory = _scenario_dir(args.dir)
    files = sorted(directory.glob("*.toml"))
    if not files:
        print(f"no scenarios in {directory}", file=sys.stderr)
        return 1
    width = max(len(f.stem) for f in files)
    for f in files:
        print(f"{f.stem:<{width}}  {scenario.describe_file(f)}")
    return 0
