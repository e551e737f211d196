"""Seconds per image: the PyTorch model (eager) vs its ONNX export in ONNX Runtime, on the CPU, in one run.

    .venv/bin/python bench/onnx_vs_torch.py [--checkpoint CKPT] [--sizes 512 800 1216] [--mmdet 800x1216]
                                            [--batches 1 4] [--reps 3]

For each static canvas size the model is exported once (dynamic batch, not timed); for mmdet mode once with
dynamic height and width too, timed at each --mmdet shape (800 x 1216 is mmdet's keep-ratio shape of a 4:3
landscape photograph, as most of COCO). Then for each
batch size both run one warm-up batch and --reps timed batches of the same images (the oracle's
photographs when present), alternately; the fastest batch time divided by the batch size is
printed, with the ratio torch / ONNX Runtime. Both use --threads CPU threads. Without --checkpoint a random
checkpoint is written to a temporary folder (speed does not depend on the weights' values).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from conversion.export.exporter import export_onnx  # noqa: E402
from model.checkpoint import load_detector  # noqa: E402
from model.preprocess import clip_sizes, load_image, preprocess  # noqa: E402
from model.random_checkpoint import write_random_checkpoint  # noqa: E402

PHOTOS = Path(__file__).resolve().parent.parent / "tests/fixtures/oracle/images"


def inputs_for(size: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch` static-canvas inputs from the oracle photographs (cycled), or flat grey images without them."""
    photos = sorted(PHOTOS.glob("*.*")) if PHOTOS.is_dir() else []
    images = [load_image(p) for p in photos] or [np.full((480, 640, 3), 127, np.uint8)]
    xs, metas = zip(*(preprocess(images[i % len(images)], "static", size) for i in range(batch)))
    return np.stack(xs), clip_sizes(list(metas))


def mmdet_inputs_for(hw: tuple[int, int], batch: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch` mmdet-mode inputs placed on an H x W padded input (what a batch of one shape bucket holds)."""
    photos = sorted(PHOTOS.glob("*.*")) if PHOTOS.is_dir() else []
    images = [load_image(p) for p in photos] or [np.full((480, 640, 3), 127, np.uint8)]
    out = np.zeros((batch, 3) + hw, np.float32)
    clip = np.zeros((batch, 2), np.float32)
    for i in range(batch):
        x, meta = preprocess(images[i % len(images)], "mmdet")
        h, w = min(hw[0], x.shape[1]), min(hw[1], x.shape[2])
        out[i, :, :h, :w] = x[:, :h, :w]
        clip[i] = clip_sizes([meta])[0]
    return out, np.minimum(clip, np.array(hw, np.float32))


def timed_pair(first, second, reps: int) -> tuple[float, float]:
    """Fastest of `reps` calls of each, alternated after one warm-up call each.

    Alternating exposes both to the same machine conditions; the fastest call is the least disturbed
    by other processes on shared cores.
    """
    first()
    second()
    times: tuple[list, list] = ([], [])
    for _ in range(reps):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return min(times[0]), min(times[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="mmdet .pth (default: a random one)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800, 1216])
    parser.add_argument("--mmdet", nargs="*", default=["800x1216"], help="mmdet-mode shapes HxW to time")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or write_random_checkpoint(Path(tmp) / "random.pth")
        detector = load_detector(checkpoint)
        print(f"torch {torch.__version__}, onnxruntime {ort.__version__}, {args.threads} threads, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}, fastest of {args.reps} batches each",
              file=sys.stderr)
        print("input           batch  torch s/image  onnxruntime s/image  torch/onnxruntime")
        shapes = [("static", (size, size)) for size in args.sizes]
        shapes += [("mmdet", tuple(int(v) for v in hw.split("x"))) for hw in args.mmdet]
        sessions: dict = {}
        for mode, hw in shapes:
            key = hw[0] if mode == "static" else "mmdet"
            if key not in sessions:
                path = Path(tmp) / f"model_{key}.onnx"
                start = time.perf_counter()
                export_onnx(detector, path, target="onnxruntime", batch=None, size=hw[0], size_mode=mode)
                print(f"exported {mode} {key} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
                sessions[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            session = sessions[key]
            label = f"{'static' if mode == 'static' else 'mmdet'} {hw[0]}x{hw[1]}"
            for batch in args.batches:
                images, clip = inputs_for(hw[0], batch) if mode == "static" else mmdet_inputs_for(hw, batch)
                t_images, t_clip = torch.from_numpy(images), torch.from_numpy(clip)

                def run_torch():
                    with torch.inference_mode():
                        detector(t_images, t_clip)

                def run_ort():
                    session.run(["dets", "labels"], {"input": images, "clip_hw": clip})

                torch_s, ort_s = (t / batch for t in timed_pair(run_torch, run_ort, args.reps))
                print(f"{label:<15} {batch:<6} {torch_s:<14.3f} {ort_s:<20.3f} {torch_s / ort_s:.2f}", flush=True)
                # other processes on the same cores skew both columns: say how busy the machine was
                print(f"  load average (1 min) after this row: {os.getloadavg()[0]:.1f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
