"""What every `python -m` entry point shares: the one-line usage error and the subcommand dispatcher.

It sits at the ground floor (standard library only) so that `conversion`, which may import only
`model`, and `workers` and `orchestrator` print bad input the same way: `error: <what> (<file or
flag>)` on stderr and exit code 2, before anything starts.
"""
from __future__ import annotations

import argparse
import importlib
import sys

USAGE_EXIT = 2
INTERRUPTED_EXIT = 130


class UsageError(Exception):
    """Bad input: printed as one line `error: <what> (<file or flag>)` with exit 2."""


def usage_error(what: object) -> int:
    """Print `error: <what>` as one line on stderr; the exit code of bad input."""
    print(f"error: {what}", file=sys.stderr)
    return USAGE_EXIT


def command_parser(prog: str, description: str, epilog: str, modules: tuple[str, ...]) -> argparse.ArgumentParser:
    """argparse with one subcommand per module; each module's `register(subparsers)` sets `func` on its parser.
    A module that is not part of this installation is left out (an import error inside it is not)."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None = None,
                interrupted: str | None = None) -> int:
    """Parse, run the chosen subcommand, turn a UsageError into one line and exit 2. With `interrupted`,
    Ctrl-C prints that line and exits 130 (the command has stopped what it started); else it propagates."""
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        return usage_error(exc)
    except KeyboardInterrupt:
        if interrupted is None:
            raise
        print(interrupted, file=sys.stderr)
        return INTERRUPTED_EXIT
