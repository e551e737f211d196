"""Preprocessing throughput (images/s) at 1216 static and in mmdet mode, one process and one per core.

    .venv/bin/python bench/preprocess.py [--images 200]

Stages, on generated photo-sized JPEGs (about 640x480):
  pool: decode + keep-ratio resize + the tensor store's atomic write (what the preprocessing pool does);
  device: store read + normalise + pad to the float32 network input (what a device worker does per image
          when its backend needs pixels);
  one go: decode + resize + normalise + pad, no store (the recipe's preprocessing).
A device at the 310P's 8.42 FPS needs 8.42 images/s of the `device` stage; the pool must keep up
with the sum over devices of the `pool` stage, or devices wait for tensors (the report says so).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.preprocess import load_image, preprocess  # noqa: E402
from orchestrator.generated_set import write_set  # noqa: E402
from tasks.store import TensorStore  # noqa: E402

FPS_310P = 8 / 0.95


def _stage(args) -> int:
    stage, mode, size, store, files = args
    st = TensorStore(store)
    for f in files:
        if stage == "pool":
            st.load(f, mode, size, pixels=False)
        elif stage == "device":
            st.load(f, mode, size).network_input()
        else:
            preprocess(load_image(f), mode, size)
    return len(files)


def rate(stage: str, mode: str, size: int, store: str, files: list[str], procs: int) -> float:
    chunks = [files[i::procs] for i in range(procs)]
    t0 = time.perf_counter()
    if procs == 1:
        n = _stage((stage, mode, size, store, files))
    else:
        with ProcessPoolExecutor(procs) as pool:
            n = sum(pool.map(_stage, [(stage, mode, size, store, c) for c in chunks]))
    return n / (time.perf_counter() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="preprocess-bench-"))
    try:
        ann, image_dir = write_set(work / "set", args.images, seed=0, images=True)
        files = sorted(str(f) for f in image_dir.glob("*.jpg"))
        print(f"{len(files)} generated JPEGs (about 640x480), {cores} cores; images/s")
        print(f"{'mode':<12} {'stage':<7} {'1 process':>9} {f'{cores} processes':>12} {'devices fed':>11}")
        for mode, size in (("static", 1216), ("mmdet", 1216)):
            label = f"{mode} {size}" if mode == "static" else mode
            for stage in ("pool", "device", "one go"):
                store = str(work / f"store-{mode}")
                if stage == "pool":
                    shutil.rmtree(store, ignore_errors=True)
                one = rate(stage, mode, size, store, files, 1)
                if stage == "pool":
                    shutil.rmtree(store, ignore_errors=True)  # cold again for the multi-process run
                many = rate(stage, mode, size, store, files, cores)
                print(f"{label:<12} {stage:<7} {one:>9.1f} {many:>12.1f} {many / FPS_310P:>11.1f}", flush=True)
        print(f"devices fed: how many 310P-speed devices ({FPS_310P:.2f} FPS) that stage keeps busy on all cores")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
