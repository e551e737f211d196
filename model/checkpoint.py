"""Read an mmdet Faster R-CNN R50-FPN-DCN checkpoint safely and refuse anything else in one line."""
from __future__ import annotations

import os
import re

import torch
from torch import Tensor

from model.config import MODEL, ModelConfig
from model.detector import Detector

# mmdet v1.x spelled the DCN offset conv as a sibling of conv2; mmcv renames it on load.
_OLD_OFFSET_KEY = re.compile(r"^(backbone\.layer\d+\.\d+)\.conv2_offset\.(weight|bias)$")
_BN_COUNTER = ".num_batches_tracked"
ARCHITECTURE = "Faster R-CNN R50-FPN-DCN"


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint of this model; the message is one line naming the file."""


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of an mmdet `.pth` (`{'meta', 'state_dict'}` or a bare state dict), unpickled safely."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"no such checkpoint file ({path})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, random bytes, JSON, a pickle with forbidden globals
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"not a readable PyTorch checkpoint: {reason[:160]} ({path})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"no state_dict in checkpoint (found {type(obj).__name__}) ({path})")
    bad = next((k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"state_dict entry {bad!r} is not a tensor ({path})")
    return obj


def to_model_keys(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename old-style DCN offset keys (`layerN.M.conv2_offset.*`) where the new spelling is absent."""
    out = {}
    for key, value in state_dict.items():
        match = _OLD_OFFSET_KEY.match(key)
        if match:
            new_key = f"{match.group(1)}.conv2.conv_offset.{match.group(2)}"
            if new_key not in state_dict:
                key = new_key
        out[key] = value
    return out


def check_state_dict(state_dict: dict[str, Tensor], expected: dict[str, Tensor], path: str) -> None:
    """Raise CheckpointError naming the first missing, unexpected, mis-shaped or non-finite tensor."""
    missing = [k for k in expected if k not in state_dict and not k.endswith(_BN_COUNTER)]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        first = f"missing key {missing[0]}" if missing else f"unexpected key {unexpected[0]}"
        counts = f"{len(missing)} missing, {len(unexpected)} unexpected"
        raise CheckpointError(f"not a {ARCHITECTURE} checkpoint: {first} ({counts}) ({path})")
    for key, want in expected.items():
        got = state_dict.get(key)
        if got is None:
            continue
        if key.endswith(_BN_COUNTER):
            if got.numel() != 1:
                raise CheckpointError(f"not a {ARCHITECTURE} checkpoint: {key} has shape "
                                      f"{list(got.shape)}, expected a scalar ({path})")
            continue
        if got.shape != want.shape:
            raise CheckpointError(f"not a {ARCHITECTURE} checkpoint: {key} has shape {list(got.shape)}, "
                                  f"expected {list(want.shape)} ({path})")
        if not got.is_floating_point():
            raise CheckpointError(f"not a {ARCHITECTURE} checkpoint: {key} has dtype {got.dtype} ({path})")
        if not torch.isfinite(got).all():
            raise CheckpointError(f"checkpoint tensor {key} holds NaN or inf ({path})")


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu", cfg: ModelConfig = MODEL) -> Detector:
    """A Detector in eval mode on `device` with the checkpoint's weights; CheckpointError if it does not fit."""
    path = os.fspath(path)
    state_dict = to_model_keys(read_state_dict(path))
    model = Detector(cfg)
    expected = model.state_dict()
    check_state_dict(state_dict, expected, path)
    # The BN batch counters are unused at inference; keep the model's own (shape differs between writers).
    weights = {k: v.to(expected[k].dtype) if not k.endswith(_BN_COUNTER) else expected[k]
               for k, v in state_dict.items()}
    for key in expected:
        weights.setdefault(key, expected[key])
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()
