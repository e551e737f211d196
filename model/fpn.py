"""FPN without extra convs: P2..P5 from C2..C5, P6 = stride-2 subsample of P5."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvWithBias(nn.Module):
    """A conv held as `.conv`, so parameter names match mmcv's ConvModule in the checkpoint."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class FPN(nn.Module):
    """mmdet's FPN (add_extra_convs=False): nearest upsampling to the lower level's size, then 3x3 convs."""

    def __init__(self, in_channels: tuple[int, ...], out_channels: int, num_outs: int):
        super().__init__()
        self.num_outs = num_outs
        self.lateral_convs = nn.ModuleList(ConvWithBias(c, out_channels, 1) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvWithBias(out_channels, out_channels, 3) for _ in in_channels)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return outs
