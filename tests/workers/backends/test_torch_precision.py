"""The torch backend's fp16 construction and its CPU path, checked without a GPU.

Autocast works the same way on the CPU (with bfloat16), so the float32 islands are checked there:
which modules they wrap, that they change nothing in float32, and that under autocast the islands
compute in float32 while the rest runs in the low precision.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.detector import Detector
from model.preprocess import plan_geometry
from model.random_checkpoint import synthetic_image
from workers.backends import create_backend
from workers.backends.base import InferenceBatch
from workers.backends.torch_backend import TorchBackend
from workers.backends.torch_precision import Float32Island, keep_float32

SIZE = 128


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return Detector().eval()


@pytest.fixture(scope="module")
def inputs():
    images = torch.cat([synthetic_image(0, SIZE), synthetic_image(1, SIZE)])
    return images, torch.tensor([[SIZE, SIZE], [100.0, 120.0]])


def test_islands_are_the_dcn_layers_and_the_ranked_or_decoded_outputs(detector):
    model = copy.deepcopy(detector)
    names = keep_float32(model)
    assert len([n for n in names if n.endswith(".conv2")]) == 13  # stages c3-c5: 4 + 6 + 3 blocks
    assert names[-4:] == ["rpn_head.rpn_cls", "rpn_head.rpn_reg", "roi_head.bbox_head.fc_cls",
                          "roi_head.bbox_head.fc_reg"]
    assert keep_float32(model) == names  # idempotent: nothing is wrapped twice
    assert sum(isinstance(m, Float32Island) for m in model.modules()) == 17
    assert not isinstance(model.get_submodule("backbone.layer1.0.conv2"), Float32Island)  # c2 has no DCN


def test_islands_change_nothing_in_float32(detector, inputs):
    model = copy.deepcopy(detector)
    keep_float32(model)
    images, clip = inputs
    with torch.inference_mode():
        feats, feats_w = detector.neck(detector.backbone(images)), model.neck(model.backbone(images))
        assert all(torch.equal(a, b) for a, b in zip(feats, feats_w))
        proposals, proposals_w = detector.rpn_head(feats, clip), model.rpn_head(feats_w, clip)
        assert all(torch.equal(a, b) for a, b in zip(proposals, proposals_w))
        boxes, scores = detector.roi_head.classify(feats, proposals[0], clip)
        boxes_w, scores_w = model.roi_head.classify(feats_w, proposals_w[0], clip)
    assert torch.equal(boxes, boxes_w) and torch.equal(scores, scores_w)


def test_under_autocast_islands_run_float32_and_the_rest_low_precision(detector, inputs):
    model = copy.deepcopy(detector)
    names = keep_float32(model)
    seen = {}

    def record(name):
        def hook(module, args, out):
            first = out[0] if isinstance(out, tuple) else out
            seen[name] = ([a.dtype for a in args if torch.is_tensor(a)], first.dtype)
        return hook

    for name in names:
        model.get_submodule(name).inner.register_forward_hook(record(name))
    for name in ("backbone.conv1", "neck.fpn_convs.0.conv", "roi_head.bbox_head.shared_fcs.0", "rpn_head"):
        model.get_submodule(name).register_forward_hook(record(name))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        dets, labels = model(*inputs)
    for name in names:
        assert seen[name] == ([torch.float32], torch.float32), name
    for name in ("backbone.conv1", "neck.fpn_convs.0.conv", "roi_head.bbox_head.shared_fcs.0"):
        assert seen[name][1] == torch.bfloat16, name
    assert seen["rpn_head"][1] == torch.float32  # proposals: decoded in float32
    assert dets.dtype == torch.float32 and labels.dtype == torch.int64 and dets.shape == (2, 100, 5)


def test_fp16_is_refused_on_the_cpu_in_one_line():
    with pytest.raises(ValueError) as err:
        create_backend("torch", model="m.pth", device="cpu:0", precision="fp16")
    assert str(err.value) == "fp16 needs a CUDA device; the torch backend runs fp32 on cpu (--precision)"
    assert TorchBackend("m.pth", device="cuda:0", precision="fp16").precision == "fp16"  # accepted for a GPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_cuda_device_without_cuda_fails_the_load_naming_the_device():
    with pytest.raises(RuntimeError, match=r"CUDA is not available.*\(--device cuda:0\)"):
        TorchBackend("m.pth", device="cuda:0", precision="fp16").load()


def test_cpu_path_runs_the_model_as_is_and_prefetch_does_nothing(detector, inputs, monkeypatch):
    monkeypatch.setattr("model.checkpoint.load_detector", lambda path, device="cpu": detector)
    backend = TorchBackend("m.pth", device="cpu:0")
    backend.load()
    assert backend.staging is None and backend.float32_modules == []
    images, clip = inputs
    metas = [plan_geometry(SIZE, SIZE, "static", static_size=SIZE)] * 2
    batch = InferenceBatch(images=images.numpy(), clip_hw=clip.numpy(), metas=metas, image_ids=[1, 2])
    backend.prefetch(batch)
    dets, labels = backend.infer(batch)
    with torch.inference_mode():
        ref_dets, ref_labels = detector(images, clip)
    assert np.array_equal(dets, ref_dets.numpy()) and np.array_equal(labels, ref_labels.numpy())
    assert "copies" not in backend.describe()
