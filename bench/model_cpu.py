"""Seconds per image of the PyTorch model (eager, batch 1) on the CPU, per static input size.

    .venv/bin/python bench/model_cpu.py [--checkpoint CKPT] [--image IMG] [--sizes 512 800 1216] [--reps 3]

Without --checkpoint a random checkpoint in the mmdet format is written to a temporary folder
(speed does not depend on the weights' values, only the detections' count a little). Each size
runs one warm-up forward, then --reps timed ones; the median wall time is printed, and the
median CPU time of this process divided by the thread count (what the wall time would be on an
otherwise idle machine, when other work shares the cores).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.checkpoint import load_detector  # noqa: E402
from model.preprocess import clip_sizes, load_image, preprocess  # noqa: E402
from model.random_checkpoint import write_random_checkpoint  # noqa: E402

DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "tests/fixtures/oracle/images/astronaut.png"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="mmdet .pth (default: a random one)")
    parser.add_argument("--image", default=str(DEFAULT_IMAGE), help="photo to run (default: the oracle's astronaut)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800, 1216])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or write_random_checkpoint(Path(tmp) / "random.pth")
        detector = load_detector(checkpoint)
    img = load_image(args.image) if Path(args.image).is_file() else np.full((480, 640, 3), 127, np.uint8)
    print(f"torch {torch.__version__}, {args.threads} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"image {args.image if Path(args.image).is_file() else 'flat grey 640x480'}", file=sys.stderr)
    print("size  s/image (median)  min     max     cpu-s/thread  detections")
    for size in args.sizes:
        x, meta = preprocess(img, "static", size)
        images, clip = torch.from_numpy(x[None]), torch.from_numpy(clip_sizes([meta]))
        times, cpu = [], []
        with torch.inference_mode():
            for rep in range(args.reps + 1):
                start, start_cpu = time.perf_counter(), time.process_time()
                _, labels = detector(images, clip)
                if rep:  # the first run is the warm-up
                    times.append(time.perf_counter() - start)
                    cpu.append((time.process_time() - start_cpu) / args.threads)
        found = int((labels >= 0).sum())
        print(f"{size:<5} {statistics.median(times):<17.3f} {min(times):<7.3f} {max(times):<7.3f} "
              f"{statistics.median(cpu):<13.3f} {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
