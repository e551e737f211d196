"""`python -m orchestrator <command>`: each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import sys

from commandline import command_parser, run_command

COMMAND_MODULES = (
    "orchestrator.submit",
    "orchestrator.status",
    "orchestrator.report",
    "orchestrator.resume",
    "orchestrator.cancel",
    "orchestrator.selftest",
    "orchestrator.dashboard",
    "orchestrator.compare",
)


def build_parser() -> argparse.ArgumentParser:
    return command_parser(
        "python -m orchestrator",
        "Evaluate Faster R-CNN R50-FPN-DCN on COCO across many devices: box AP, device FPS, end-to-end FPS.",
        "examples:\n  python -m orchestrator submit --batch 8\n  python -m orchestrator selftest\n"
        "  python -m orchestrator submit --batch 1,4,8,16 --dashboard\n"
        "  python -m orchestrator status --broker redis://head:6379/0\n"
        "  python -m orchestrator cancel JOB --broker redis://head:6379/0\n"
        "  python -m orchestrator resume JOB --broker redis://head:6379/0\n"
        "  python -m orchestrator compare RUN_A RUN_B",
        COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv,
                       interrupted="interrupted: everything this command started was stopped")


if __name__ == "__main__":
    sys.exit(main())
