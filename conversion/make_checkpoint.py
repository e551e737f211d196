"""`python -m conversion make-checkpoint`: a full-size random checkpoint in the exact mmdet format."""
from __future__ import annotations

import argparse
import os
import sys

from commandline import UsageError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "make-checkpoint", help="write a random full-size checkpoint in mmdet's format",
        description="Write a random Faster R-CNN R50-FPN-DCN checkpoint ({'meta', 'state_dict'}, mmdet key "
                    "names) whose weights give some detections on ordinary photos. For tests and demos, "
                    "when the trained weights are not at hand.",
        epilog="example: python -m conversion make-checkpoint --out random.pth --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help=".pth file to write")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same weights (default 0)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UsageError(f"output folder does not exist ({args.out})")
    if args.seed < 0:
        raise UsageError(f"seed must be >= 0, got {args.seed} (--seed)")

    from model.random_checkpoint import write_random_checkpoint
    write_random_checkpoint(args.out, seed=args.seed)
    print(f"wrote {args.out} (random weights, seed {args.seed})", file=sys.stderr)
    return 0
