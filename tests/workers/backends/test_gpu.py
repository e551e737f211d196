"""On a CUDA device: the GPU backends find the CPU model's detections on the oracle photographs.

fp32 (torch on cuda:0, ONNX Runtime's CUDA provider) must match >= 99.9 % of the torch fp32 CPU
detections (same class, corners within 0.05 px, score within 1e-4: the CPU parity tests' tolerances)
at the 1216 canvas, and make no detection the CPU model does not; fp16's matched fraction and its
AP against fp32 on a generated COCO-format set are printed, not required.
The checkpoint is the parity checkpoint (bench/gpu_compare.py says why). Skipped, with the reason,
where there is no CUDA device.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
import gpu_compare as compare  # noqa: E402

from workers.backends.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402
from workers.backends.torch_backend import TorchBackend  # noqa: E402

SIZE = 1216
MIN_MATCHED = 0.999
TORCH_CUDA = torch.cuda.is_available()
ORT_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
needs_torch_cuda = pytest.mark.skipif(not TORCH_CUDA, reason="no CUDA device: torch.cuda.is_available() is False")
needs_ort_cuda = pytest.mark.skipif(not ORT_CUDA, reason="no CUDA device for onnxruntime: its providers are "
                                    f"{', '.join(ort.get_available_providers())} (needs onnxruntime-gpu)")
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def oracle():
    folder = compare.oracle_dir()
    if folder is None:
        pytest.skip("oracle fixture not found (tests/fixtures/oracle or $EVALUATOR_ORACLE)")
    return folder


@pytest.fixture(scope="module")
def checkpoint(oracle, tmp_path_factory):
    return compare.parity_checkpoint(tmp_path_factory.mktemp("gpu"), oracle)


@pytest.fixture(scope="module")
def photos(oracle):
    images, clip, _ = compare.static_inputs(compare.oracle_photos(oracle), SIZE)
    return images, clip


@pytest.fixture(scope="module")
def reference(checkpoint, photos):
    return compare.cpu_reference(checkpoint, *photos)


def assert_matched(what: str, reference, produced) -> dict:
    totals = compare.match_all(reference, produced)
    print(f"\n{what}: {totals['matched']}/{totals['ref_count']} matched ({100 * totals['fraction']:.2f} %), "
          f"{totals['extra']} extra, max box diff {totals['max_box_diff']:.2e} px, "
          f"max score diff {totals['max_score_diff']:.2e}")
    assert totals["ref_count"] > 0, "the CPU model found nothing: the comparison would be empty"
    assert totals["fraction"] >= MIN_MATCHED, f"{what}: {totals}"
    assert totals["extra"] == 0, f"{what}: detections the CPU model does not make: {totals}"
    return totals


@needs_torch_cuda
def test_torch_fp32_on_the_gpu_finds_the_cpu_detections(checkpoint, photos, reference):
    backend = TorchBackend(checkpoint, "cuda:0")
    backend.load()
    try:
        for batch in (1, 4):  # 4: the second batch is the fifth photograph and three padded canvases
            got, _ = compare.run_like_the_worker(backend, compare.make_batches(*photos, batch, rows=batch))
            assert_matched(f"torch fp32 cuda:0, batch {batch}", reference, got)
        assert backend.staging.prefetched >= 2  # the copies were started ahead, as the worker does
    finally:
        backend.close()


@needs_torch_cuda
def test_prefetched_and_inline_copies_give_the_same_detections(checkpoint, photos):
    backend = TorchBackend(checkpoint, "cuda:0")
    backend.load()
    try:
        batches = compare.make_batches(*photos, 2)
        inline = [backend.infer(b) for b in batches]  # nothing prefetched: staged in the call
        prefetched, _ = compare.run_like_the_worker(backend, batches)
    finally:
        backend.close()
    flat = [(d[j], lab[j]) for (d, lab), b in zip(inline, batches) for j in range(len(b.image_ids))]
    totals = compare.match_all(flat, prefetched, box_tol=1e-3, score_tol=1e-6)
    assert (totals["matched"], totals["extra"]) == (totals["ref_count"], 0)


@needs_ort_cuda
def test_onnxruntime_cuda_fp32_finds_the_cpu_detections(checkpoint, photos, reference, tmp_path_factory,
                                                        monkeypatch):
    from conversion.export.exporter import export_onnx
    from model.checkpoint import load_detector
    path = tmp_path_factory.mktemp("gpu_onnx") / "parity_1216.onnx"
    export_onnx(load_detector(checkpoint), path, target="onnxruntime", batch=None, size=SIZE)
    monkeypatch.setenv("EVALUATOR_TENSORRT", "0")  # the CUDA provider itself
    backend = OnnxRuntimeBackend(path, "cuda:0")
    backend.load()
    try:
        print(f"\n{backend.provider_line}")
        assert backend.providers[0] == "CUDAExecutionProvider" and backend.bound is not None
        for batch in (1, 4):
            got, _ = compare.run_like_the_worker(backend, compare.make_batches(*photos, batch, rows=batch))
            assert_matched(f"onnxruntime CUDA fp32, batch {batch}", reference, got)
    finally:
        backend.close()


@needs_torch_cuda
def test_torch_fp16_is_reported(checkpoint, photos, reference, tmp_path_factory):
    """fp16 is reported, not required: matched fraction (strict and loose) and AP against fp32 on a generated set."""
    fp16 = TorchBackend(checkpoint, "cuda:0", precision="fp16")
    fp16.load()
    try:
        got, _ = compare.run_like_the_worker(fp16, compare.make_batches(*photos, 1))
        for d, lab in got:
            assert np.isfinite(d).all() and ((lab >= -1) & (lab < 80)).all()
        strict = compare.match_all(reference, got)
        loose = compare.match_all(reference, got, box_tol=1.0, score_tol=1e-2)
        print(f"\ntorch fp16 vs fp32 CPU: {100 * strict['fraction']:.1f} % matched at 0.05 px / 1e-4, "
              f"{100 * loose['fraction']:.1f} % at 1 px / 1e-2 ({strict['ref_count']} detections)")
        print(f"float32 kept in {len(fp16.float32_modules)} modules: {', '.join(fp16.float32_modules[-4:])}, ...")
        try:
            import pycocotools  # noqa: F401
        except ImportError:
            print("AP on the generated set: not computed (pycocotools not installed)")
            return
        generated = compare.GeneratedSet(tmp_path_factory.mktemp("generated"), 16, SIZE)
        fp16_dets, _ = compare.run_like_the_worker(fp16, compare.make_batches(generated.images, generated.clip, 4))
    finally:
        fp16.close()
    fp32 = TorchBackend(checkpoint, "cuda:0")
    fp32.load()
    try:
        fp32_dets, _ = compare.run_like_the_worker(fp32, compare.make_batches(generated.images, generated.clip, 4))
    finally:
        fp32.close()
    ap32, ap16 = generated.average_precision(fp32_dets), generated.average_precision(fp16_dets)
    truth = generated.as_ground_truth(fp32_dets, Path(tmp_path_factory.mktemp("fp32_gt")) / "gt.json")
    agreement = generated.average_precision(fp16_dets, truth) if truth else None
    print(f"generated set ({len(generated.image_ids)} images): AP fp32 {ap32:.4f}, fp16 {ap16:.4f}, "
          f"difference {ap16 - ap32:+.4f}; AP of fp16 against fp32's detections (score >= 0.3): "
          + (f"{agreement:.4f}" if agreement is not None else "n/a (fp32 found none)"))
