"""GPU throughput of the evaluator's backends at a static 1216x1216 canvas, beside the seed's T4 and 310P figures.

    python bench/gpu.py [--device cuda:0] [--batches 1 4 8 16] [--seconds 3] [--configs torch-fp32 ...]
                        [--checkpoint CKPT] [--json FILE] [--budget-s 420]

For each backend (torch fp32, torch fp16, ONNX Runtime CUDA, ONNX Runtime TensorRT fp32 / fp16, where
this host can run them) and each batch size: device FPS = images / summed seconds of the device
calls (copy in, run, copy out; the next batch is prefetched as the worker does), after --warmup
batches (a TensorRT engine is built then), over at least --seconds; and the peak GPU memory above
the level before the backend was loaded (NVML when present, else torch's reserved memory). Then
the matched fraction of its detections against the torch fp32 CPU detections on the oracle
photographs (same class, corners within 0.05 px, score within 1e-4; the parity checkpoint, see
bench/gpu_compare.py), and its box AP on a generated COCO-format set with the difference to torch
fp32 on the GPU. Without a GPU it prints one line saying so and exits 0. `--device cpu:0` runs the
same table on the CPU (slowly), to check the script.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import gpu_compare as compare  # noqa: E402
from gpu_memory import PeakMemory  # noqa: E402

SEED_ROWS = (("T4 (seed)", {1: 5.40, 4: 4.00, 8: 3.60}), ("Ascend 310P (seed)", {1: 7.41, 4: 8.81, 8: 8.45, 16: 8.71}),
             ("V100 (mmdet model zoo)", {1: 17.8}))
CONFIGS = {  # key: (label, backend, precision, TensorRT allowed)
    "torch-fp32": ("torch fp32", "torch", "fp32", False),
    "torch-fp16": ("torch fp16", "torch", "fp16", False),
    "ort-cuda": ("onnxruntime CUDA fp32", "onnxruntime", "fp32", False),
    "ort-trt-fp32": ("onnxruntime TensorRT fp32", "onnxruntime", "fp32", True),
    "ort-trt-fp16": ("onnxruntime TensorRT fp16", "onnxruntime", "fp16", True),
}


def no_gpu_reason(device: str) -> str | None:
    """None when `device` is a CUDA device torch or onnxruntime can use, else the one line to print."""
    if device.startswith("cpu"):
        return None
    import onnxruntime as ort
    import torch
    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    return ("no GPU: torch.cuda.is_available() is False and onnxruntime offers no CUDAExecutionProvider "
            f"({', '.join(ort.get_available_providers())}); nothing measured")


def why_not(key: str, device: str) -> str | None:
    """Why a configuration cannot run here (None: it can)."""
    import onnxruntime as ort
    import torch

    from workers.backends.ort_providers import TENSORRT, tensorrt_missing
    _, backend, precision, tensorrt = CONFIGS[key]
    if device.startswith("cpu"):
        return "GPU only" if precision == "fp16" or tensorrt else None
    if backend == "torch":
        return None if torch.cuda.is_available() else "torch has no CUDA here"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDAExecutionProvider here (onnxruntime-gpu not installed)"
    if tensorrt:
        return "not in this onnxruntime build" if TENSORRT not in ort.get_available_providers() else tensorrt_missing()
    return None


def make_backend(key: str, device: str, checkpoint: Path, onnx_path: Path | None):
    from workers.backends import create_backend
    _, backend, precision, tensorrt = CONFIGS[key]
    os.environ["EVALUATOR_TENSORRT"] = "1" if tensorrt else "0"
    b = create_backend(backend, str(onnx_path if backend == "onnxruntime" else checkpoint), device, precision)
    b.load()
    if tensorrt and "TensorrtExecutionProvider" not in b.providers:
        line = b.provider_line
        b.close()
        raise RuntimeError(f"TensorRT did not start: {line}")
    return b


def measure(backend, batches, warmup: int, seconds: float, min_calls: int = 3) -> dict:
    """Device FPS over >= `seconds` and >= `min_calls` calls after `warmup`; the next batch prefetched before each call."""
    calls, images, spent = 0, 0, 0.0
    backend.prefetch(batches[0])
    k = 0
    while calls < warmup + min_calls or spent < seconds:
        batch, upcoming = batches[k % len(batches)], batches[(k + 1) % len(batches)]
        backend.prefetch(upcoming)  # the worker's loader does this while the device runs `batch`
        t0 = time.perf_counter()
        backend.infer(batch)
        dt = time.perf_counter() - t0
        if calls >= warmup:
            spent += dt
            images += len(batch.image_ids)
        calls += 1
        k += 1
    return {"fps": images / spent, "calls": calls - warmup, "seconds": spent}


def label(key: str, device: str) -> str:
    return CONFIGS[key][0].replace("CUDA", "CPU") if device.startswith("cpu") else CONFIGS[key][0]


def run_config(key, args, checkpoint, onnx_path, inputs, reference, generated, budget_end) -> dict:
    row = {"key": key, "label": label(key, args.device), "fps": {}, "peak_mib": {}}
    probe = PeakMemory(args.device)
    with probe.section() as load_peak:
        backend = make_backend(key, args.device, checkpoint, onnx_path)
    row["load_peak_mib"] = load_peak.mib
    row["describe"] = backend.describe()
    try:
        images, clip = inputs
        for b in args.batches:
            if time.time() > budget_end:
                row["fps"][b] = None
                row.setdefault("skipped", []).append(f"batch {b}: time budget")
                continue
            pool = [compare.make_batches(_cycled(images, b, i), _cycled(clip, b, i), b)[0] for i in range(2)]
            try:
                with probe.section() as peak:
                    row["fps"][b] = measure(backend, pool, args.warmup, args.seconds)["fps"]
            except Exception as exc:  # out of memory at a large batch, say: the smaller ones still count
                row["fps"][b] = None
                row.setdefault("skipped", []).append(f"batch {b}: {exc.__class__.__name__}: {exc}"[:300])
                probe.release_cache()
                continue
            row["peak_mib"][b] = peak.mib
            print(f"  {row['label']} batch {b}: {row['fps'][b]:.2f} FPS, peak {peak.mib or 0:.0f} MiB", file=sys.stderr)
        if reference is not None:
            got, _ = compare.run_like_the_worker(backend, compare.make_batches(*reference["inputs"], 1))
            row["matched"] = compare.match_all(reference["detections"], got)
        if generated is not None:
            got, _ = compare.run_like_the_worker(backend, compare.make_batches(generated.images, generated.clip, 4,
                                                                               rows=4))
            row["ap"] = generated.average_precision(got)
            if generated.reference is None and key == "torch-fp32":
                generated.reference = generated.as_ground_truth(got, generated.folder / "torch_fp32_gt.json")
            if generated.reference is not None:
                row["ap_vs_fp32"] = generated.average_precision(got, generated.reference)
    finally:
        backend.close()
        probe.release()
    return row


def _cycled(array, n: int, offset: int):
    """n rows of `array`, starting at row `offset * n`, wrapping around."""
    import numpy as np
    return array[np.arange(offset * n, offset * n + n) % len(array)]


def render(rows: list[dict], batches: list[int], device_name: str, size: int = 1216) -> str:
    """The table: FPS and peak GPU memory per batch, matched fraction and AP, and the seed's rows beside them."""
    def cell(value, fmt="{:.2f}"):
        return "-" if value is None else fmt.format(value)

    head = (f"{'':<28}" + "".join(f"{'FPS b' + str(b):>9}" for b in batches)
            + "".join(f"{'MiB b' + str(b):>9}" for b in batches) + f"{'matched':>17}{'AP':>8}{'dAP':>8}{'AP~fp32':>9}")
    lines = [f"static {size}x{size} on {device_name}; FPS = images / seconds of the device calls (copy in, run, "
             f"copy out); MiB = peak GPU memory above the idle level; matched = oracle photographs' detections "
             f"of torch fp32 on the CPU found again; AP = generated set; dAP = AP - AP(torch fp32); AP~fp32 = "
             f"AP against torch fp32's detections (score >= 0.3) as ground truth", head]
    base_ap = next((r.get("ap") for r in rows if r["key"] == "torch-fp32"), None)
    for r in rows:
        if "error" in r:
            lines.append(f"{r['label']:<28}not run: {r['error']}")
            continue
        m = r.get("matched")
        matched = f"{m['matched']}/{m['ref_count']} {100 * m['fraction']:.1f}%" if m else "-"
        ap = r.get("ap")
        dap = None if ap is None or base_ap is None else ap - base_ap
        lines.append(f"{r['label']:<28}" + "".join(f"{cell(r['fps'].get(b)):>9}" for b in batches)
                     + "".join(f"{cell(r['peak_mib'].get(b), '{:.0f}'):>9}" for b in batches)
                     + f"{matched:>17}{cell(ap, '{:.4f}'):>8}{cell(dap, '{:+.4f}'):>8}"
                     + f"{cell(r.get('ap_vs_fp32'), '{:.4f}'):>9}")
    for name, fps in SEED_ROWS:
        lines.append(f"{name:<28}" + "".join(f"{cell(fps.get(b)):>9}" for b in batches))
    ran = [(fps, r["label"], b) for r in rows for b, fps in r.get("fps", {}).items() if fps]
    if ran:
        fps, best, b = max(ran)
        t4 = SEED_ROWS[0][1][1]
        b1 = next((r["fps"].get(1) for r in rows if r["key"] == "torch-fp32" and "fps" in r), None)
        lines.append(f"best: {best} at batch {b}, {fps:.2f} FPS = {fps / t4:.1f}x the T4's batch-1 figure"
                     + (f"; torch fp32 at batch 1: {b1 / t4:.1f}x" if b1 else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0", help="cuda:N (default cuda:0), or cpu:0 to check the script")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--seconds", type=float, default=3.0, help="timed device seconds per cell (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    p.add_argument("--checkpoint", help="mmdet .pth (default: the parity checkpoint from the oracle, else random)")
    p.add_argument("--ap-images", type=int, default=16, help="images of the generated set for AP (0: no AP)")
    p.add_argument("--size", type=int, default=1216)
    p.add_argument("--budget-s", type=float, default=420, help="no new cell starts after this many seconds")
    p.add_argument("--json", help="write every number to this file")
    args = p.parse_args(argv)
    reason = no_gpu_reason(args.device)
    if reason:
        print(reason)
        return 0
    budget_end = time.time() + args.budget_s
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        oracle = compare.oracle_dir()
        checkpoint = Path(args.checkpoint) if args.checkpoint else (
            compare.parity_checkpoint(tmp, oracle) if oracle else _random_checkpoint(tmp))
        photos = compare.oracle_photos(oracle) if oracle else []
        images, clip, _ = compare.static_inputs(photos, args.size) if photos else _grey(args.size)
        reference = None
        if photos:
            print("torch fp32 CPU reference on the oracle photographs ...", file=sys.stderr)
            reference = {"inputs": (images, clip), "detections": compare.cpu_reference(checkpoint, images, clip)}
        generated = _generated(tmp, args)
        runnable = {k: why_not(k, args.device) for k in args.configs}
        onnx_path = _export(checkpoint, tmp, args.size) if any(
            CONFIGS[k][1] == "onnxruntime" and not why for k, why in runnable.items()) else None
        _start_cuda(args.device)  # the context exists before the first baseline, so no row is charged for it
        rows = []
        for key in args.configs:
            if runnable[key]:
                rows.append({"key": key, "label": label(key, args.device), "error": runnable[key]})
                continue
            print(f"{label(key, args.device)} ...", file=sys.stderr)
            try:
                rows.append(run_config(key, args, checkpoint, onnx_path, (images, clip), reference, generated,
                                       budget_end))
            except Exception as exc:  # one configuration failing must not hide the others
                rows.append({"key": key, "label": label(key, args.device), "error": f"{exc.__class__.__name__}: {exc}"})
            if args.json:  # as it goes, in case the run is cut short
                _write_json(args, rows)
    name = _device_name(args.device)
    print(render(rows, args.batches, name, args.size))
    if args.json:
        _write_json(args, rows, name)
    return 0


def _write_json(args, rows: list[dict], name: str = "") -> None:
    Path(args.json).write_text(json.dumps({"device": name or args.device, "size": args.size, "batches": args.batches,
                                           "rows": rows, "seed": dict(SEED_ROWS)}, indent=1, default=str))


def _start_cuda(device: str) -> None:
    import torch
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.zeros(1, device=device)


def _random_checkpoint(tmp: Path) -> Path:
    from model.random_checkpoint import write_random_checkpoint
    return write_random_checkpoint(tmp / "random.pth")


def _grey(size: int):
    import numpy as np

    from model.preprocess import clip_sizes, preprocess
    x, meta = preprocess(np.full((480, 640, 3), 127, np.uint8), "static", static_size=size)
    return x[None], clip_sizes([meta]), [meta]


def _generated(tmp: Path, args):
    if args.ap_images <= 0:
        return None
    try:
        import pycocotools  # noqa: F401
    except ImportError:
        print("pycocotools not installed: no AP column", file=sys.stderr)
        return None
    generated = compare.GeneratedSet(tmp / "generated", args.ap_images, args.size)
    generated.folder, generated.reference = tmp, None  # the torch fp32 row's detections become a ground truth
    return generated


def _export(checkpoint: Path, tmp: Path, size: int) -> Path:
    from conversion.export.exporter import export_onnx
    from model.checkpoint import load_detector
    path = tmp / f"model_{size}.onnx"
    print(f"exporting {path.name} (dynamic batch) ...", file=sys.stderr)
    export_onnx(load_detector(checkpoint), path, target="onnxruntime", batch=None, size=size)
    return path


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch
        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(int(device.split(':')[1]))} ({device})"
        return device
    import platform
    return f"{platform.processor() or 'CPU'} ({device})"


if __name__ == "__main__":
    sys.exit(main())
