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
def test_cuda_matches_cpu(checkpoint):
    batch = make_batch(2)
    cpu, gpu = TorchBackend(checkpoint, "cpu"), TorchBackend(checkpoint, "cuda:0")
    cpu.load()
    gpu.load()
    (d_cpu, l_cpu), (d_gpu, l_gpu) = cpu.infer(batch), gpu.infer(batch)
    assert gpu.describe()["device_name"]
    from evaluation.matching import match_detections
    # GPU kernels round differently and random DCN weights amplify round-off: similar, not equal.
    for i in range(2):
        m = match_detections(d_cpu[i], l_cpu[i], d_gpu[i], l_gpu[i], box_tol=0.5, score_tol=1e-2)
        assert m.matched >= 0.9 * m.ref_count
