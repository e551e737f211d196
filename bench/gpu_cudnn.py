"""The torch backend's fp32 FPS and peak GPU memory per batch size under cuDNN's heuristics and under its
autotuner (every algorithm timed: `benchmark_limit` 0, what the backend uses), to see whether a batch size falls
on a slow, workspace-hungry algorithm.

    python bench/gpu_cudnn.py [--device cuda:0] [--batches 1 2 4 8] [--seconds 2]

Each setting runs in a process of its own: PyTorch keeps the plan it chose for an input shape for the life of
the process, whatever the flags say afterwards. Same inputs and FPS definition as bench/gpu.py (the oracle
photographs at 1216, the parity checkpoint).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import gpu  # noqa: E402
import gpu_compare as compare  # noqa: E402
from gpu_memory import PeakMemory  # noqa: E402

SETTINGS = {"heuristics": (False, 10), "autotuned": (True, 0)}  # cudnn.benchmark, cudnn.benchmark_limit


def measure_setting(args) -> None:
    import torch
    benchmark, limit = SETTINGS[args.setting]
    with tempfile.TemporaryDirectory() as tmp:
        oracle = compare.oracle_dir()
        checkpoint = compare.parity_checkpoint(Path(tmp), oracle)
        images, clip, _ = compare.static_inputs(compare.oracle_photos(oracle), 1216)
        gpu._start_cuda(args.device)
        probe = PeakMemory(args.device)
        backend = gpu.make_backend("torch-fp32", args.device, checkpoint, None)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.benchmark_limit = benchmark, limit  # before any conv
        for b in args.batches:
            pool = [compare.make_batches(gpu._cycled(images, b, i), gpu._cycled(clip, b, i), b)[0] for i in range(2)]
            t0 = time.perf_counter()
            with probe.section() as peak:
                m = gpu.measure(backend, pool, args.warmup, args.seconds)
            print(f"{args.setting:>10} {b:>5} {m['fps']:>7.2f} {b / m['fps']:>7.3f} {peak.mib or 0:>9.0f}"
                  f"   ({m['calls']} timed calls, {time.perf_counter() - t0:.0f} s with warm-up)", flush=True)
        backend.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--setting", choices=list(SETTINGS), help=argparse.SUPPRESS)  # one setting, in this process
    args = p.parse_args()
    reason = gpu.no_gpu_reason(args.device)
    if reason:
        print(reason)
        return 0
    if args.setting:
        measure_setting(args)
        return 0
    print(f"{'cuDNN':>10} {'batch':>5} {'FPS':>7} {'s/call':>7} {'peak MiB':>9}", flush=True)
    for setting in SETTINGS:
        subprocess.run([sys.executable, __file__, "--setting", setting, "--device", args.device, "--seconds",
                        str(args.seconds), "--warmup", str(args.warmup), "--batches", *map(str, args.batches)],
                       check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
