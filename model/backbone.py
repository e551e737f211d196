"""ResNet-50 (pytorch style) with deformable convolution v1 in the 3x3 conv of chosen stages.

Module and parameter names equal mmdet's (`conv1`, `bn1`, `layer2.0.conv2.conv_offset`, ...),
so the checkpoint's state dict loads without a name table. BN always uses running statistics.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import deform_conv2d

from model.config import ModelConfig

EXPANSION = 4


class DeformConv2d(nn.Module):
    """mmcv's DeformConv2dPack (DCN v1): offsets from `conv_offset` on the same input, no bias, no mask.

    Offset channel 2k is dy and 2k+1 is dx of kernel tap k, the layout torchvision uses too,
    so the offsets are passed unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.conv_offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size,
                                     stride=stride, padding=padding, dilation=dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        offset = self.conv_offset(x)
        return deform_conv2d(x, offset, self.weight, None, stride=self.stride, padding=self.padding,
                             dilation=self.dilation)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, maybe deformable) -> 1x1, plus the identity or a projected shortcut."""

    def __init__(self, inplanes: int, planes: int, stride: int, dcn: bool, eps: float):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes, eps=eps)
        if dcn:
            self.conv2 = DeformConv2d(planes, planes, 3, stride=stride, padding=1)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=eps)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION, eps=eps)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes * EXPANSION:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION, eps=eps),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem + 4 stages; returns C2..C5 (strides 4, 8, 16, 32)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        stem = cfg.stage_planes[0]
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=cfg.bn_eps)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = stem
        self.stage_names = []
        for i, (blocks, planes, stride, dcn) in enumerate(
                zip(cfg.stage_blocks, cfg.stage_planes, cfg.stage_strides, cfg.stage_with_dcn)):
            layer = nn.Sequential(*[
                Bottleneck(inplanes if b == 0 else planes * EXPANSION, planes, stride if b == 0 else 1, dcn,
                           cfg.bn_eps)
                for b in range(blocks)])
            name = f"layer{i + 1}"
            self.add_module(name, layer)
            self.stage_names.append(name)
            inplanes = planes * EXPANSION
        self.out_channels = tuple(p * EXPANSION for p in cfg.stage_planes)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs
