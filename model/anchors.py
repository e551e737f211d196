"""mmdet v2's AnchorGenerator: base anchors centred on the cell's top-left corner, (y, x, ratio) order."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class AnchorGenerator(nn.Module):
    """Anchors of every FPN level for a feature map of a given size; no parameters, no +1 anywhere."""

    def __init__(self, strides: tuple[int, ...], scales: tuple[float, ...], ratios: tuple[float, ...]):
        super().__init__()
        self.strides = tuple(strides)
        for level, stride in enumerate(self.strides):
            self.register_buffer(f"base_{level}", base_anchors(stride, scales, ratios), persistent=False)

    @property
    def num_anchors(self) -> int:
        return self.base_0.shape[0]

    def grid_anchors(self, level: int, feat_h: int, feat_w: int) -> Tensor:
        """[feat_h * feat_w * A, 4] anchors of one level; row (y * W + x) * A + a."""
        base = getattr(self, f"base_{level}")
        stride = self.strides[level]
        shift_x = torch.arange(0, feat_w, device=base.device) * stride
        shift_y = torch.arange(0, feat_h, device=base.device) * stride
        yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
        xx, yy = xx.reshape(-1), yy.reshape(-1)
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).type_as(base)
        return (base[None, :, :] + shifts[:, None, :]).view(-1, 4)


def base_anchors(stride: int, scales: tuple[float, ...], ratios: tuple[float, ...]) -> Tensor:
    """[len(ratios) * len(scales), 4] anchors around (0, 0), computed in float32 as mmdet does."""
    ratios_t = torch.tensor(ratios, dtype=torch.float32)
    scales_t = torch.tensor(scales, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios_t)
    w_ratios = 1 / h_ratios
    ws = (stride * w_ratios[:, None] * scales_t[None, :]).view(-1)
    hs = (stride * h_ratios[:, None] * scales_t[None, :]).view(-1)
    return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)
