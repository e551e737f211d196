"""Faster R-CNN R50-FPN-DCN (mmdetection v2.8 inference) with fixed-size batched outputs."""
from __future__ import annotations

from torch import Tensor, nn

from model.backbone import ResNet
from model.config import MODEL, ModelConfig
from model.fpn import FPN
from model.roi_head import RoIHead
from model.rpn import RPNHead


class Detector(nn.Module):
    """images [B, 3, H, W] + clip_hw [B, 2] -> dets [B, max, 5] (x1, y1, x2, y2, score), labels [B, max].

    Boxes are in the network-input frame, clipped to [0, clip_w] x [0, clip_h] of each image
    (mmdet's img_shape: the resized image in mmdet mode, the canvas in static mode). Rows past
    an image's detections have score 0, box 0 and label -1. Each image's result does not depend
    on the rest of the batch. The state dict keys are the mmdet checkpoint's own.

    The exchangeable parts come in here, torchvision-style (None = mmdet's eager operator): `select_proposals`
    and `per_level_top_k` (RPNHead), `roi_pool` and `select_detections` (RoIHead). An exporter builds the model
    with graph operators.
    """

    def __init__(self, cfg: ModelConfig = MODEL, select_proposals=None, roi_pool=None, select_detections=None,
                 per_level_top_k=None):
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg)
        self.neck = FPN(self.backbone.out_channels, cfg.fpn_channels, len(cfg.anchor_strides))
        self.rpn_head = RPNHead(cfg, select_proposals, per_level_top_k)
        self.roi_head = RoIHead(cfg, roi_pool, select_detections)

    def forward(self, images: Tensor, clip_hw: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.neck(self.backbone(images))
        proposals, _, valid = self.rpn_head(feats, clip_hw)
        return self.roi_head(feats, proposals, valid, clip_hw)
