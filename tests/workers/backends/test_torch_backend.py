"""The torch backend: the Detector behind the Backend contract, CPU here (CUDA where a GPU exists)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.checkpoint import load_detector
from model.preprocess import clip_sizes, plan_geometry
from model.random_checkpoint import synthetic_image, write_random_checkpoint
from workers.backends.base import InferenceBatch
from workers.backends.torch_backend import TorchBackend


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_random_checkpoint(tmp_path_factory.mktemp("torch_backend") / "random.pth", seed=3)


def make_batch(n: int, size: int = 256) -> InferenceBatch:
    images = torch.cat([synthetic_image(seed, size) for seed in range(n)]).numpy()
    metas = [plan_geometry(size, size, "static", static_size=size)] * n
    return InferenceBatch(images=images, clip_hw=clip_sizes(metas), metas=metas, image_ids=list(range(n)))


@pytest.mark.slow
def test_infer_equals_the_detector_and_keeps_the_contract(checkpoint):
    backend = TorchBackend(checkpoint, device="cpu:0")
    backend.load()
    batch = make_batch(3)
    dets, labels = backend.infer(batch)
    assert dets.shape == (3, 100, 5) and dets.dtype == np.float32
    assert labels.shape == (3, 100) and labels.dtype == np.int64
    with torch.inference_mode():
        ref_dets, ref_labels = load_detector(checkpoint)(torch.from_numpy(batch.images),
                                                         torch.from_numpy(batch.clip_hw))
    assert np.array_equal(dets, ref_dets.numpy()) and np.array_equal(labels, ref_labels.numpy())
    facts = backend.describe()
    assert facts["backend"] == "torch" and facts["device"] == "cpu" and facts["precision"] == "fp32"
    backend.close()
    with pytest.raises(RuntimeError, match="before load"):
        backend.infer(batch)


def test_refusals_name_the_flag(checkpoint):
    with pytest.raises(ValueError, match=r"fp16 needs a CUDA device.*--precision"):
        TorchBackend(checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match=r"--precision"):
        TorchBackend(checkpoint, precision="int8")
    with pytest.raises(ValueError, match=r"--device"):
        TorchBackend(checkpoint, device="npu:0")
    backend = TorchBackend(checkpoint)
    with pytest.raises(RuntimeError, match="before load"):
        backend.infer(make_batch(1, 64))


@pytest.mark.slow
def test_infer_needs_pixels(checkpoint):
    backend = TorchBackend(checkpoint)
    backend.load()
    batch = make_batch(1, 64)
    batch.images = None
    with pytest.raises(ValueError, match="pixels"):
        backend.infer(batch)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_with_tf32_off(tmp_path_factory):
    """fp32 on the GPU is fp32 (README: no TF32): the CPU's detections within the CPU parity tests' tolerances
    (corners 0.05 px, score 1e-4), >= 99.9 % matched and none extra, on the parity checkpoint (bench/gpu_compare.py:
    the oracle's weights with the DCN offsets damped, so round-off is not amplified past the tolerance)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
    import gpu_compare as compare

    from evaluation.matching import match_detections
    oracle = compare.oracle_dir()
    if oracle is None:
        pytest.skip("oracle fixture not found (tests/fixtures/oracle or $EVALUATOR_ORACLE)")
    checkpoint = compare.parity_checkpoint(tmp_path_factory.mktemp("parity"), oracle)
    batch = make_batch(2)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # what the backend must undo
    cpu, gpu = TorchBackend(checkpoint, "cpu"), TorchBackend(checkpoint, "cuda:0")
    cpu.load()
    gpu.load()
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    (d_cpu, l_cpu), (d_gpu, l_gpu) = cpu.infer(batch), gpu.infer(batch)
    assert gpu.describe()["device_name"]
    matched = ref_count = extra = 0
    for i in range(2):
        m = match_detections(d_cpu[i], l_cpu[i], d_gpu[i], l_gpu[i], box_tol=0.05, score_tol=1e-4)
        matched, ref_count, extra = matched + m.matched, ref_count + m.ref_count, extra + m.extra
    assert ref_count > 0 and matched >= 0.999 * ref_count and extra == 0, (matched, ref_count, extra)
