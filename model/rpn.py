"""RPN head and mmdet v2.8's proposal selection (per-level top-k, decode, per-level NMS, top-N)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.anchors import AnchorGenerator
from model.boxes import batched_nms_padded, decode_deltas, gather_rows, take_rows, top_k
from model.config import ModelConfig


def level_nms(boxes: Tensor, scores: Tensor, levels: Tensor, iou_threshold: float, max_out: int) -> Tensor:
    """mmcv's batched NMS with the FPN levels as groups: [B, max_out] kept rows, -1 pads."""
    return batched_nms_padded(boxes, scores, levels, None, iou_threshold, max_out)


class LevelNMS:
    """mmdet v2.8's proposal selection: NMS within each level, then the best `max_out` over all levels.

    `nms(boxes [B, N, 4], scores [B, N], levels [N], iou_threshold, max_out) -> kept rows [B, max_out]` is the
    NMS operator: the eager one by default, an exporter's graph operator when it builds the model.
    """

    def __init__(self, iou_threshold: float, max_out: int, nms=level_nms):
        self.iou_threshold, self.max_out, self.nms = iou_threshold, max_out, nms

    def __call__(self, boxes: Tensor, scores: Tensor, levels: Tensor, level_sizes: list[int]
                 ) -> tuple[Tensor, Tensor, Tensor]:
        keep = self.nms(boxes, scores, levels, self.iou_threshold, self.max_out)
        return gather_rows(boxes, keep), gather_rows(scores, keep), keep >= 0


class RPNHead(nn.Module):
    """Shared 3x3 conv + 1x1 objectness (sigmoid) and 1x1 deltas over every FPN level.

    `select_proposals(boxes [B, N, 4], scores [B, N], levels [N], level_sizes) -> (proposals, scores, valid)` picks
    the proposals among the decoded top-k of every level (default: LevelNMS, mmdet's); `per_level_top_k(scores, k)`
    takes each level's best (default: mmdet's sort; `level_top_k_dynamic` for a graph of any input size).
    """

    def __init__(self, cfg: ModelConfig, select_proposals=None, per_level_top_k=None):
        super().__init__()
        self.cfg = cfg
        c = cfg.fpn_channels
        self.anchor_generator = AnchorGenerator(cfg.anchor_strides, cfg.anchor_scales, cfg.anchor_ratios)
        a = self.anchor_generator.num_anchors
        self.rpn_conv = nn.Conv2d(c, c, 3, padding=1)
        self.rpn_cls = nn.Conv2d(c, a, 1)
        self.rpn_reg = nn.Conv2d(c, a * 4, 1)
        self.select_proposals = select_proposals or LevelNMS(cfg.rpn_nms_iou, cfg.rpn_nms_post)
        self.level_top_k = per_level_top_k or level_top_k

    def forward(self, feats: list[Tensor], clip_hw: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Proposals [B, nms_post, 4] and scores [B, nms_post] (descending), valid [B, nms_post] bool.

        An image with fewer proposals gets zero boxes with score 0 and valid False after its own.
        """
        cfg = self.cfg
        scores, deltas, anchors, levels, sizes = [], [], [], [], []
        for level, feat in enumerate(feats):
            score, delta, anchor = self.level_outputs(feat, level)
            score, index = self.level_top_k(score, cfg.rpn_nms_pre)
            scores.append(score)
            deltas.append(take_rows(delta, index))
            anchors.append(take_rows(anchor, index))
            levels.append(torch.full_like(score[0], level, dtype=torch.int64))  # a graph of any size: no int()
            sizes.append(score.shape[1])
        boxes = decode_deltas(torch.cat(anchors, dim=1), torch.cat(deltas, dim=1), cfg.rpn_stds,
                              cfg.max_ratio, clip_hw).squeeze(2)
        return self.select_proposals(boxes, torch.cat(scores, dim=1), torch.cat(levels), sizes)

    def level_outputs(self, feat: Tensor, level: int) -> tuple[Tensor, Tensor, Tensor]:
        """Objectness [B, N] (sigmoid), deltas [B, N, 4] and anchors [B, N, 4] of one level, in (H, W, A) order."""
        batch, _, h, w = feat.shape
        t = F.relu(self.rpn_conv(feat))
        score = self.rpn_cls(t).permute(0, 2, 3, 1).reshape(batch, -1).sigmoid()
        delta = self.rpn_reg(t).permute(0, 2, 3, 1).reshape(batch, -1, 4)
        anchor = self.anchor_generator.grid_anchors(level, h, w).expand(batch, -1, -1)
        return score, delta, anchor


def level_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best of [B, N] scores in descending order (all N in place when N <= k), as mmdet's sort does.

    Traced, the branch on N is decided by the example: right for a graph of fixed input size only."""
    n = scores.shape[1]
    if n <= k:
        return scores, torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    return top_k(scores, k)


def level_top_k_dynamic(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """`level_top_k` for a graph whose input height and width vary: traced as TopK(min(N, k)) (torchvision's
    `_topk_min`), so a level with N <= k keeps all N, sorted; eager, `level_top_k` itself."""
    if not torch.jit.is_tracing():
        return level_top_k(scores, k)
    n = torch._shape_as_tensor(scores)[1].unsqueeze(0)
    k_min = torch.min(torch.cat((torch.tensor([k], dtype=n.dtype), n), 0))
    return scores.topk(k_min, dim=1)  # a tensor k, as torchvision passes it
