"""fp16 for the torch backend: autocast for the convolutions and FC layers, float32 where half would break the model.

Under `torch.autocast(dtype=float16)` convolutions and linear layers run in half precision on the
tensor cores. These stay float32, for the reasons given:

- the deformable convolutions (offset conv + `deform_conv2d`): offsets are sampling positions in
  pixels; half precision (11-bit mantissa) rounds a 60 px offset to a 0.03 px grid, and bilinear
  sampling turns that into feature error. The whole module runs on float32 inputs.
- the RPN's objectness and delta convs and the box head's cls/reg layers (1x1 convs and two FCs,
  a negligible share of the work): their outputs are ranked (top-k, score threshold, NMS order)
  and decoded into boxes, where half precision ties scores and rounds deltas.
- RoIAlign and NMS: torchvision registers autocast rules that run them in float32 already.
- box decoding, clipping and the anchors: float32, because their inputs (anchors, proposals and
  the deltas above) are float32 and autocast leaves elementwise arithmetic in the widest type.

The weights stay float32 (autocast casts per call), so the same loaded model serves both precisions.
"""
from __future__ import annotations

import torch
from torch import nn


class Float32Island(nn.Module):
    """Runs `inner` with autocast off on float32 copies of its inputs; the output stays float32."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args):
        device_type = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cuda")
        with torch.autocast(device_type=device_type, enabled=False):
            return self.inner(*(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                for a in args))


def float32_module_names(model: nn.Module) -> list[str]:
    """Dotted names of the modules that must stay float32 (see the module docstring)."""
    from model.backbone import DeformConv2d

    dcn = [name.removesuffix(".inner") for name, module in model.named_modules() if isinstance(module, DeformConv2d)]
    names = dcn + ["rpn_head.rpn_cls", "rpn_head.rpn_reg", "roi_head.bbox_head.fc_cls", "roi_head.bbox_head.fc_reg"]
    return names


def keep_float32(model: nn.Module) -> list[str]:
    """Wrap each float32 module of `model` in a Float32Island, in place; returns their names. Idempotent."""
    names = float32_module_names(model)
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        module = getattr(parent, attr)
        if not isinstance(module, Float32Island):
            setattr(parent, attr, Float32Island(module))
    return names
