"""The torch backend's fp32 FPS and peak GPU memory per batch size with cuDNN's autotuner off (the backend's
choice for fp32) and on, to see whether a batch size falls on a slow, workspace-hungry algorithm.

    python bench/gpu_cudnn.py [--device cuda:0] [--batches 1 2 4 8] [--seconds 2]

Same inputs and FPS definition as bench/gpu.py (the oracle photographs at 1216, the parity checkpoint).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import gpu  # noqa: E402
import gpu_compare as compare  # noqa: E402
from gpu_memory import PeakMemory  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    reason = gpu.no_gpu_reason(args.device)
    if reason:
        print(reason)
        return 0
    import torch
    with tempfile.TemporaryDirectory() as tmp:
        oracle = compare.oracle_dir()
        checkpoint = compare.parity_checkpoint(Path(tmp), oracle)
        images, clip, _ = compare.static_inputs(compare.oracle_photos(oracle), 1216)
        gpu._start_cuda(args.device)
        print(f"{'cudnn.benchmark':>15} {'batch':>5} {'FPS':>7} {'s/call':>7} {'peak MiB':>9}")
        for autotune in (False, True):
            probe = PeakMemory(args.device)
            backend = gpu.make_backend("torch-fp32", args.device, checkpoint, None)
            torch.backends.cudnn.benchmark = autotune
            for b in args.batches:
                pool = [compare.make_batches(gpu._cycled(images, b, i), gpu._cycled(clip, b, i), b)[0] for i in range(2)]
                t0 = time.perf_counter()
                with probe.section() as peak:
                    m = gpu.measure(backend, pool, args.warmup, args.seconds)
                print(f"{str(autotune):>15} {b:>5} {m['fps']:>7.2f} {b / m['fps']:>7.3f} {peak.mib or 0:>9.0f}"
                      f"   ({m['calls']} timed calls, {time.perf_counter() - t0:.0f} s with warm-up)", flush=True)
            backend.close()
            probe.release_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
