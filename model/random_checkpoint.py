"""A full-size random checkpoint in the exact mmdet v2 format, conditioned so photos give detections.

No trained weights can be downloaded everywhere this product is tested, yet the whole chain
(loading, export, workers, COCO results) needs a real-sized model that finds *something*. The
weights are drawn per tensor from (seed, key); then BN statistics and the class-logit offsets
are calibrated on a synthetic image, so activations stay in a sane range and some boxes score
above the 0.05 threshold. Same seed, same software and CPU kind: the same file (the calibration
runs the model, so its float32 round-off is in the BN statistics).
"""
from __future__ import annotations

import hashlib
import math
import os
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import COCO_CLASSES, MODEL, PREPROCESS, ModelConfig
from model.detector import Detector

CALIBRATION_SIZE = 320  # side of the synthetic calibration image
BN3_GAMMA = 0.35  # small last-BN gain per bottleneck keeps the residual sum from growing
RPN_CLS_BIAS = -4.0
CLS_GAIN = 0.5  # spread of the class logits
CLS_BIAS_SPREAD = 0.5
TARGET_PASS_FRACTION = 0.05  # share of calibration proposals whose best class scores above score_thr


def _uniform(seed: int, key: str, shape: tuple[int, ...], bound: float) -> Tensor:
    """Uniform in [-bound, bound), drawn from a generator seeded by (seed, key)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1).mul_(bound).float()


def _initial_value(seed: int, key: str, like: Tensor) -> Tensor:
    """The drawn value of one state-dict entry before calibration."""
    shape = tuple(like.shape)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
    if key.endswith("num_batches_tracked"):
        return torch.zeros((), dtype=torch.int64)
    if key.endswith("running_mean"):
        return torch.zeros(shape)
    if key.endswith("running_var"):
        return torch.ones(shape)
    if ".bn" in key or ".downsample.1." in key:
        if key.endswith(".weight"):
            return torch.full(shape, BN3_GAMMA if ".bn3." in key else 1.0)
        return _uniform(seed, key, shape, 0.1)
    if ".conv_offset." in key:  # offsets of about a pixel, varied
        return _uniform(seed, key, shape, math.sqrt(3 / fan_in) if key.endswith("weight") else 1.0)
    if key.startswith("rpn_head.rpn_cls."):
        if key.endswith("weight"):
            return _uniform(seed, key, shape, 0.8 * math.sqrt(3 / fan_in))
        return _uniform(seed, key, shape, 0.1) + RPN_CLS_BIAS
    if key.startswith("rpn_head.rpn_reg.") or key.startswith("roi_head.bbox_head.fc_reg."):
        gain = 0.05 if key.startswith("rpn_head") else 0.4
        return _uniform(seed, key, shape, gain * math.sqrt(3 / fan_in) if key.endswith("weight") else 0.05)
    if key.startswith("roi_head.bbox_head.fc_cls."):
        if key.endswith("weight"):
            return _uniform(seed, key, shape, CLS_GAIN * math.sqrt(3 / fan_in))
        return _uniform(seed, key, shape, CLS_BIAS_SPREAD)
    if key.startswith("neck."):
        return _uniform(seed, key, shape, math.sqrt(3 / fan_in) if key.endswith("weight") else 0.05)
    if key.endswith(".weight"):  # backbone convs, rpn_conv, shared FCs: Kaiming-uniform
        return _uniform(seed, key, shape, math.sqrt(6 / fan_in))
    return _uniform(seed, key, shape, 0.05)


def synthetic_image(seed: int, size: int = CALIBRATION_SIZE) -> Tensor:
    """A normalised [1, 3, size, size] picture: smooth colour fields plus a few flat rectangles."""
    gen = torch.Generator().manual_seed(seed)
    img = F.interpolate(torch.rand(1, 3, 6, 6, generator=gen) * 255, size=(size, size), mode="bilinear",
                        align_corners=False)
    for _ in range(6):
        x0, y0 = (torch.rand(2, generator=gen) * size * 0.7).long().tolist()
        w, h = (torch.rand(2, generator=gen) * size * 0.4 + size * 0.1).long().tolist()
        img[:, :, y0:y0 + h, x0:x0 + w] = (torch.rand(3, generator=gen) * 255).view(1, 3, 1, 1)
    mean = torch.tensor(PREPROCESS.mean).view(1, 3, 1, 1)
    std = torch.tensor(PREPROCESS.std).view(1, 3, 1, 1)
    return (img - mean) / std


@torch.no_grad()
def _calibrate(model: Detector, seed: int) -> None:
    """BN running statistics from one synthetic image, then class-logit offsets from its proposals."""
    image = synthetic_image(seed)
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: one batch gives exactly its statistics
        bn.train()
    model.backbone(image)
    model.eval()
    clip = torch.tensor([[float(image.shape[2]), float(image.shape[3])]])
    feats = model.neck(model.backbone(image))
    proposals, _, valid = model.rpn_head(feats, clip)
    head = model.roi_head.bbox_head
    captured = {}
    hook = head.shared_fcs[1].register_forward_hook(lambda m, i, o: captured.setdefault("h", F.relu(o)))
    model.roi_head.classify(feats, proposals, clip)
    hook.remove()
    hidden = captured["h"][valid.view(-1)]
    # Centre every class logit on the calibration proposals, keep the drawn spread in the bias.
    head.fc_cls.bias.sub_(hidden.mean(0) @ head.fc_cls.weight.t())
    logits = hidden @ head.fc_cls.weight.t() + head.fc_cls.bias
    # Background offset: a small share of proposals gets a class above the score threshold.
    low, high = -20.0, 40.0
    for _ in range(50):
        mid = (low + high) / 2
        trial = logits.clone()
        trial[:, -1] += mid
        passing = (trial.softmax(1)[:, :-1].max(1).values > model.cfg.score_thr).float().mean()
        low, high = (mid, high) if passing > TARGET_PASS_FRACTION else (low, mid)
    head.fc_cls.bias[-1] += (low + high) / 2


def random_state_dict(seed: int = 0, cfg: ModelConfig = MODEL) -> "OrderedDict[str, Tensor]":
    """mmdet key names, shapes and order (374 entries), values drawn from `seed` and calibrated."""
    model = Detector(cfg)
    drawn = OrderedDict((k, _initial_value(seed, k, v)) for k, v in model.state_dict().items())
    model.load_state_dict(drawn)
    _calibrate(model, seed)
    out = OrderedDict()
    for key, value in model.state_dict().items():
        out[key] = drawn[key] if key.endswith("num_batches_tracked") else value.detach().clone().contiguous()
    return out


def write_random_checkpoint(path: str | os.PathLike, seed: int = 0, cfg: ModelConfig = MODEL) -> str:
    """Write `{'meta': ..., 'state_dict': ...}` as mmdet's save_checkpoint does; returns the path."""
    path = os.fspath(path)
    meta = {
        "mmdet_version": "2.8.0",
        "CLASSES": COCO_CLASSES,
        "config": f"faster_rcnn_r50_fpn_dconv_c3-c5_1x_coco with random weights; {cfg!r}",
        "generator": "model.random_checkpoint",
        "seed": int(seed),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save({"meta": meta, "state_dict": random_state_dict(seed, cfg)}, tmp)
    os.replace(tmp, path)
    return path
