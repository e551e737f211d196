"""`python -m conversion <command>`: each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import sys

from commandline import command_parser, run_command

COMMAND_MODULES = ("conversion.predict", "conversion.make_checkpoint", "conversion.pth2onnx", "conversion.onnx2om",
                   "conversion.verify")


def build_parser() -> argparse.ArgumentParser:
    return command_parser(
        "python -m conversion",
        "Turn the mmdet checkpoint into models each device runs, and prove they agree.",
        "example: python -m conversion predict --checkpoint model.pth --image cat.jpg --out dets.json",
        COMMAND_MODULES)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
