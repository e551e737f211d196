"""bench/gpu.py without a GPU: the one-line exit, the timing loop and the table (a CPU backend stands in)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def test_without_a_gpu_it_says_so_in_one_line_and_exits_0(capsys):
    torch = pytest.importorskip("torch")
    import onnxruntime as ort
    if torch.cuda.is_available() or "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this host has a GPU")
    assert bench.main([]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("no GPU: ") and "nothing measured" in out


class CountingBackend:
    """A CPU ONNX Runtime backend that counts prefetches and device calls."""

    def __init__(self, model):
        from workers.backends.onnxruntime_backend import OnnxRuntimeBackend
        self.inner = OnnxRuntimeBackend(model, "cpu:0")
        self.inner.load()
        self.prefetched, self.calls = [], 0

    def prefetch(self, batch):
        self.prefetched.append(batch)

    def infer(self, batch):
        assert any(p is batch for p in self.prefetched)  # prefetched before its device call, as the worker does
        self.calls += 1
        return self.inner.infer(batch)


def test_fps_counts_only_timed_calls_after_warm_up(tiny_onnx):
    compare = sys.modules["gpu_compare"]
    images = np.zeros((3, 3, 64, 96), np.float32)
    clip = np.tile(np.array([[64, 96]], np.float32), (3, 1))
    pool = [compare.make_batches(images, clip, 2, rows=2)[0], compare.make_batches(images[1:], clip[1:], 2)[0]]
    backend = CountingBackend(tiny_onnx)
    result = bench.measure(backend, pool, warmup=2, seconds=0.05, min_calls=4)
    assert backend.calls == result["calls"] + 2 and result["calls"] >= 4
    assert result["fps"] == pytest.approx(2 * result["calls"] / result["seconds"])
    detections, seconds = compare.run_like_the_worker(backend, compare.make_batches(images, clip, 2, rows=2))
    assert len(detections) == 3 and len(seconds) == 2  # padded rows are dropped
    totals = compare.match_all(detections, detections)
    assert totals["fraction"] == 1.0 and totals["extra"] == 0


def test_table_puts_the_seed_rows_beside_the_measured_ones():
    rows = [{"key": "torch-fp32", "label": "torch fp32", "fps": {1: 60.0, 4: 80.0}, "peak_mib": {1: 2100.0, 4: 5000.0},
             "matched": {"matched": 999, "ref_count": 1000, "fraction": 0.999}, "ap": 0.25, "ap_vs_fp32": 1.0},
            {"key": "torch-fp16", "label": "torch fp16", "fps": {1: 90.0, 4: None}, "peak_mib": {1: 1500.0},
             "ap": 0.24, "ap_vs_fp32": 0.97},
            {"key": "ort-trt-fp16", "label": "onnxruntime TensorRT fp16", "error": "not in this onnxruntime build"}]
    table = bench.render(rows, [1, 4], "NVIDIA H100 80GB HBM3 (cuda:0)")
    lines = table.splitlines()
    assert lines[0].startswith("static 1216x1216 on NVIDIA H100")
    fp32 = next(line for line in lines if line.startswith("torch fp32"))
    assert fp32.split()[2:8] == ["60.00", "80.00", "2100", "5000", "999/1000", "99.9%"]
    fp16 = next(line for line in lines if line.startswith("torch fp16"))
    assert fp16.split()[2:4] == ["90.00", "-"] and "-0.0100" in fp16 and fp16.endswith("0.9700")
    assert "onnxruntime TensorRT fp16   not run: not in this onnxruntime build" in lines
    assert next(line for line in lines if line.startswith("T4 (seed)")).split()[2:] == ["5.40", "4.00"]
    assert next(line for line in lines if line.startswith("Ascend 310P")).split()[3:] == ["7.41", "8.81"]
    assert lines[-1] == "best: torch fp16 at batch 1, 90.00 FPS = 16.7x the T4's batch-1 figure; " \
                        "torch fp32 at batch 1: 11.1x"


def test_agreement_ap_is_one_for_the_same_detections_and_less_for_moved_ones(tmp_path, tiny_onnx):
    pytest.importorskip("pycocotools")
    compare = sys.modules["gpu_compare"]
    generated = compare.GeneratedSet(tmp_path / "set", 4, 128)
    backend = CountingBackend(tiny_onnx)
    detections, _ = compare.run_like_the_worker(backend, compare.make_batches(generated.images, generated.clip, 2))
    truth = generated.as_ground_truth(detections, tmp_path / "gt.json")
    assert truth is not None and generated.average_precision(detections, truth) == pytest.approx(1.0)
    moved = [(d + np.array([30, 30, 30, 30, 0], np.float32) * (lab[:, None] >= 0), lab) for d, lab in detections]
    assert generated.average_precision(moved, truth) < 0.5
    # against the set's own boxes: its annotations answered back (the groundtruth backend) score 1, the model less
    from workers.backends.base import InferenceBatch
    from workers.backends.groundtruth import GroundTruthBackend
    answers = GroundTruthBackend().infer(InferenceBatch(images=None, clip_hw=generated.clip, metas=generated.metas,
                                                        image_ids=generated.image_ids,
                                                        job={"annotation": str(generated.annotation)}))
    assert generated.average_precision(list(zip(*answers))) == pytest.approx(1.0)
    assert generated.average_precision(detections) == 0.0  # the tiny model: one quarter-image box of class 3 an image
