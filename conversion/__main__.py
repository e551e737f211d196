"""`python -m conversion <command>`: each command lives in its own module with `register(subparsers)`."""
from __future__ import annotations

import argparse
import sys

from conversion import make_checkpoint, onnx2om, predict, pth2onnx, verify
from conversion.errors import UsageError

# Each module registers its own subcommand and sets `func` on its parser.
COMMAND_MODULES = (predict, make_checkpoint, pth2onnx, onnx2om, verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conversion",
        description="Turn the mmdet checkpoint into models each device runs, and prove they agree.",
        epilog="example: python -m conversion predict --checkpoint model.pth --image cat.jpg --out dets.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
