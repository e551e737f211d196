"""Box arithmetic of mmdet v2.8: delta decoding (clamp, then clip) and mmcv's batched NMS.

Everything works on a leading batch dimension. The data-dependent part (which boxes survive
NMS) is kept inside `batched_nms_padded`, the `nms` an exporter hands the heads instead
(model/rpn.py LevelNMS, model/roi_head.py MulticlassNMS).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms

# mmcv's batched_nms runs one NMS over class-shifted boxes below this many boxes, else one per class.
MMCV_NMS_SPLIT_THR = 10000


def decode_deltas(anchors: Tensor, deltas: Tensor, stds: tuple[float, ...], max_ratio: float,
                  clip_hw: Tensor) -> Tensor:
    """mmdet's `delta2bbox` (means 0): anchors [B, N, 4], deltas [B, N, 4*C] -> boxes [B, N, C, 4].

    Boxes are clipped to [0, clip_w] x [0, clip_h] per image (clip_hw [B, 2] = (h, w)). The
    expression order follows mmdet's, so float32 rounding is the same.
    """
    num = deltas.shape[-1] // 4
    stds_t = deltas.new_tensor(stds).repeat(num)
    d = deltas * stds_t
    dx = d[..., 0::4]
    dy = d[..., 1::4]
    dw = d[..., 2::4].clamp(min=-max_ratio, max=max_ratio)
    dh = d[..., 3::4].clamp(min=-max_ratio, max=max_ratio)
    px = ((anchors[..., 0] + anchors[..., 2]) * 0.5).unsqueeze(-1).expand_as(dx)
    py = ((anchors[..., 1] + anchors[..., 3]) * 0.5).unsqueeze(-1).expand_as(dy)
    pw = (anchors[..., 2] - anchors[..., 0]).unsqueeze(-1).expand_as(dw)
    ph = (anchors[..., 3] - anchors[..., 1]).unsqueeze(-1).expand_as(dh)
    gw = pw * dw.exp()
    gh = ph * dh.exp()
    gx = px + pw * dx
    gy = py + ph * dy
    x1 = gx - gw * 0.5
    y1 = gy - gh * 0.5
    x2 = gx + gw * 0.5
    y2 = gy + gh * 0.5
    boxes = torch.stack([x1, y1, x2, y2], dim=-1)  # [B, N, C, 4]
    return clip_boxes(boxes, clip_hw)


def clip_boxes(boxes: Tensor, clip_hw: Tensor) -> Tensor:
    """Clamp [B, ..., 4] boxes to [0, w] x [0, h] of their image (w and h themselves, not w-1)."""
    shape = (boxes.shape[0],) + (1,) * (boxes.dim() - 1)
    h = clip_hw[:, 0].to(boxes.dtype).reshape(shape)
    w = clip_hw[:, 1].to(boxes.dtype).reshape(shape)
    limit = torch.cat([w, h, w, h], dim=-1)  # [B, 1, .., 4]
    return torch.minimum(boxes.clamp(min=0), limit)


def mmcv_batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """mmcv 1.x `batched_nms` on one image: kept indices in descending score order.

    Below MMCV_NMS_SPLIT_THR boxes, one NMS runs on boxes shifted by `group * (max + 1)`; above,
    one NMS per group on the shifted boxes, then the union is sorted by score. IoU uses areas
    without +1 and suppresses only above the threshold (torchvision's kernel is the same).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    max_coordinate = boxes.max()
    offsets = groups.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    if boxes.shape[0] < MMCV_NMS_SPLIT_THR:
        return nms(shifted, scores, iou_threshold)
    kept = torch.zeros_like(scores, dtype=torch.bool)
    for group in torch.unique(groups):
        rows = (groups == group).nonzero().view(-1)
        kept[rows[nms(shifted[rows], scores[rows], iou_threshold)]] = True
    keep = kept.nonzero().view(-1)
    order = scores[keep].sort(descending=True, stable=True)[1]
    return keep[order]


def batched_nms_padded(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor | None,
                       iou_threshold: float, max_out: int) -> Tensor:
    """Per image, mmcv's batched NMS over the rows where `valid`; [B, max_out] int64 row indices, -1 pads.

    boxes [B, N, 4], scores [B, N], groups [N] or [B, N] (NMS never crosses groups), valid [B, N]
    bool or None (all rows). Only the valid rows take part (their order is kept), so the shift
    uses the maximum over them, exactly as mmdet's filtered candidates do.
    """
    batch, n = scores.shape
    keep_all = torch.full((batch, max_out), -1, dtype=torch.int64, device=scores.device)
    groups = groups.expand(batch, n)
    for b in range(batch):
        rows = torch.arange(n, device=scores.device) if valid is None else valid[b].nonzero().view(-1)
        keep = mmcv_batched_nms(boxes[b, rows], scores[b, rows], groups[b, rows], iou_threshold)[:max_out]
        keep_all[b, :keep.numel()] = rows[keep]
    return keep_all


def take_rows(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, ...] at non-negative index [B, K] -> [B, K, ...] (no padding: no integer clamp in the graph,
    which the Ascend graph's opset 11 lacks)."""
    extra = values.shape[2:]
    return values.gather(1, index.reshape(index.shape + (1,) * len(extra)).expand(index.shape + extra))


def gather_rows(values: Tensor, index: Tensor, fill: float = 0) -> Tensor:
    """values [B, N, ...] at index [B, K] (-1 = padding) -> [B, K, ...], padding rows set to fill."""
    pad = index < 0
    out = take_rows(values, index.clamp(min=0))
    return out.masked_fill(pad.reshape(pad.shape + (1,) * (values.dim() - 2)), fill)


def top_k(values: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k largest of each row in descending order, ties to the lower index: a stable sort in eager mode,
    ONNX TopK (the same rule) when traced."""
    if torch.jit.is_tracing():
        return values.topk(k, dim=1)
    ranked, index = values.sort(dim=1, descending=True, stable=True)
    return ranked[:, :k], index[:, :k]
