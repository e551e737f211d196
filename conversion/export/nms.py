"""Per-image, per-group NMS through ONNX `NonMaxSuppression`: the `nms` operators the ONNX Runtime graph's Detector
is built with (model/rpn.py LevelNMS and model/roi_head.py MulticlassNMS take them), same contract as the eager ones.

ONNX NMS runs every (batch, class) pair on its own. The RPN's groups (FPN levels) become its classes;
the box head's (image, class) pairs become its batches, since each class has its own boxes. Boxes are
shifted by `group * (max + 1)` exactly as mmcv's `batched_nms` does, so every IoU is computed on the
same float32 numbers as in the torch model (ONNX Runtime's IoU arithmetic equals torchvision's).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

from model.boxes import top_k

NEG_INF = float("-inf")


def select_boxes(boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                 score_threshold: float) -> Tensor:
    """Eager NonMaxSuppression (ONNX semantics) with torchvision's kernel: same IoU, same strict comparisons."""
    selected = []
    for b in range(scores.shape[0]):
        for c in range(scores.shape[1]):
            rows = (scores[b, c] > score_threshold).nonzero().view(-1)
            keep = rows[nms(boxes[b, rows], scores[b, c, rows], iou_threshold)[:max_per_class]]
            ids = torch.tensor([b, c], dtype=torch.int64).expand(keep.numel(), 2)
            selected.append(torch.cat([ids, keep[:, None]], dim=1))
    return torch.cat(selected) if selected else torch.zeros((0, 3), dtype=torch.int64)


class NonMaxSuppression(torch.autograd.Function):
    """ONNX NonMaxSuppression: boxes [NB, N, 4], scores [NB, C, N] -> selected [K, 3] (batch, class, box).

    Kept boxes have score > score_thr and are listed per (batch, class) in descending score order.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> Tensor:
        return select_boxes(boxes, scores, max_per_class, iou_threshold, score_threshold)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class, iou_threshold, score_threshold):
        def const(v, dtype):
            return g.op("Constant", value_t=torch.tensor([v], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64),
                    const(iou_threshold, torch.float32), const(score_threshold, torch.float32))


def shift_by_group(boxes: Tensor, groups: Tensor, candidates: Tensor | None) -> Tensor:
    """mmcv's offset trick per image: boxes [B, N, 4] + group * (max over the candidates' boxes + 1)."""
    if candidates is None:
        max_coordinate = boxes.amax(dim=(1, 2))
    else:
        masked = torch.where(candidates[..., None], boxes, torch.full_like(boxes, NEG_INF))
        max_coordinate = masked.amax(dim=(1, 2))
        max_coordinate = torch.where(torch.isfinite(max_coordinate), max_coordinate, torch.zeros_like(max_coordinate))
    offsets = groups.to(boxes) * (max_coordinate[:, None] + 1)  # [B, N]
    return boxes + offsets[..., None]


def padded_top(scores: Tensor, batch_index: Tensor, row_index: Tensor, num_rows: int, max_out: int) -> Tensor:
    """Kept (image, row) pairs -> [B, max_out] row indices in descending score order, -1 pads."""
    batch = scores.shape[0]
    kept = torch.full_like(scores, NEG_INF)
    kept = kept.index_put((batch_index, row_index), scores[batch_index, row_index])
    k = min(max_out, num_rows)
    values, index = top_k(kept, k)
    index = torch.where(values == NEG_INF, torch.full_like(index, -1), index)
    if k < max_out:
        index = torch.cat([index, index.new_full((batch, max_out - k), -1)], dim=1)
    return index


def level_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float, max_out: int,
              num_groups: int) -> Tensor:
    """RPN: boxes [B, N, 4], scores [B, N], level of each row [N] -> [B, max_out] indices (-1 pads)."""
    shifted = shift_by_group(boxes, groups, None)
    member = groups[None, :] == torch.arange(num_groups, device=groups.device)[:, None]  # [G, N]
    grouped = torch.where(member[None], scores[:, None, :], torch.full_like(scores[:, None, :], NEG_INF))
    selected = NonMaxSuppression.apply(shifted, grouped, max_out, iou_threshold, NEG_INF)
    return padded_top(scores, selected[:, 0], selected[:, 2], scores.shape[1], max_out)


def class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, candidates: Tensor, iou_threshold: float,
              max_out: int, num_classes: int) -> Tensor:
    """Box head: rows = (proposal, class) pairs, class fastest ([B, P*C, 4], [B, P*C], labels [P*C]) -> [B, max_out]
    indices; `num_classes` (static) lays the rows out per class."""
    batch, rows = scores.shape
    num = rows // num_classes
    shifted = shift_by_group(boxes, labels, candidates)
    masked = torch.where(candidates, scores, torch.full_like(scores, NEG_INF))
    per_class_boxes = shifted.view(batch, num, num_classes, 4).transpose(1, 2).reshape(batch * num_classes, num, 4)
    per_class_scores = masked.view(batch, num, num_classes).transpose(1, 2).reshape(batch * num_classes, 1, num)
    selected = NonMaxSuppression.apply(per_class_boxes, per_class_scores, max_out, iou_threshold, NEG_INF)
    image = torch.div(selected[:, 0], num_classes, rounding_mode="floor")
    row = selected[:, 2] * num_classes + selected[:, 0] % num_classes
    return padded_top(scores, image, row, rows, max_out)
