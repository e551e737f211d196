"""RPN head and mmdet v2.8's proposal selection (per-level top-k, decode, per-level NMS, top-N)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.anchors import AnchorGenerator
from model.boxes import batched_nms_padded, decode_deltas, gather_rows
from model.config import ModelConfig


class RPNHead(nn.Module):
    """Shared 3x3 conv + 1x1 objectness (sigmoid) and 1x1 deltas over every FPN level."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.fpn_channels
        self.anchor_generator = AnchorGenerator(cfg.anchor_strides, cfg.anchor_scales, cfg.anchor_ratios)
        a = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(c, c, 3, padding=1)
        self.rpn_cls = nn.Conv2d(c, a, 1)
        self.rpn_reg = nn.Conv2d(c, a * 4, 1)

    def forward(self, feats: list[Tensor], clip_hw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Proposals [B, nms_post, 4] and scores [B, nms_post] (descending), valid [B, nms_post] bool.

        An image with fewer proposals gets zero boxes with score 0 and valid False after its own.
        """
        cfg = self.cfg
        scores, deltas, anchors, levels = [], [], [], []
        for level, feat in enumerate(feats):
            score, delta, anchor = self.level_outputs(feat, level)
            score, index = level_top_k(score, cfg.rpn_nms_pre)
            scores.append(score)
            deltas.append(gather_rows(delta, index))
            anchors.append(gather_rows(anchor, index))
            levels.append(torch.full((score.shape[1],), level, dtype=torch.int64, device=score.device))
        scores = torch.cat(scores, dim=1)
        boxes = decode_deltas(torch.cat(anchors, dim=1), torch.cat(deltas, dim=1), cfg.rpn_stds,
                              cfg.max_ratio, clip_hw).squeeze(2)
        keep = batched_nms_padded(boxes, scores, torch.cat(levels), None, cfg.rpn_nms_iou, cfg.rpn_nms_post)
        return gather_rows(boxes, keep), gather_rows(scores, keep), keep >= 0


    def level_outputs(self, feat: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """Objectness [B, N] (sigmoid), deltas [B, N, 4] and anchors [B, N, 4] of one level, in (H, W, A) order."""
        batch, _, h, w = feat.shape
        t = F.relu(self.rpn_conv(feat))
        score = self.rpn_cls(t).permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        delta = self.rpn_reg(t).permute(0, 2, 3, 1).reshape(batch, -1, 4)
        anchor = self.anchor_generator.grid_anchors(level, h, w).expand(batch, -1, -1)
        return score, delta, anchor


def level_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of [B, N] scores in descending order (all N in place when N <= k), as mmdet's sort does."""
    n = scores.shape[1]
    if n <= k:
        return scores, torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    ranked, index = scores.sort(dim=1, descending=True, stable=True)
    return ranked[:, :k], index[:, :k]
