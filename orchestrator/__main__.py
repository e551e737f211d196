"""`python -m orchestrator <command>`: each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import importlib
import sys

from orchestrator.cli import UsageError

# A module registers its own subcommand and sets `func` on its parser; absent ones are skipped.
COMMAND_MODULES = (
    "orchestrator.submit",
    "orchestrator.status",
    "orchestrator.report",
    "orchestrator.resume",
    "orchestrator.cancel",
    "orchestrator.selftest",
    "orchestrator.dashboard",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator",
        description="Evaluate Faster R-CNN R50-FPN-DCN on COCO across many devices: box AP, device FPS, "
                    "end-to-end FPS.",
        epilog="examples:\n  python -m orchestrator submit --batch 8\n  python -m orchestrator selftest\n"
               "  python -m orchestrator submit --batch 1,4,8,16 --dashboard\n"
               "  python -m orchestrator status --broker redis://head:6379/0\n"
               "  python -m orchestrator cancel JOB --broker redis://head:6379/0\n"
               "  python -m orchestrator resume JOB --broker redis://head:6379/0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not part of this installation
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything this command started was stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
