"""Second stage: RoIAlign on the mmdet-chosen FPN level, Shared2FC box head, class-wise NMS.

The two exchangeable parts come in through RoIHead's constructor: `roi_pool(feats, rois)` (default
LevelRoIAlign, mmdet's SingleRoIExtractor) and `select_detections(boxes, scores, valid)` (default
MulticlassNMS, mmdet's multiclass_nms). Each default keeps its traceable form beside the eager one
(`torch.jit.is_tracing()`), as torchvision's poolers do; an exporter hands in graph operators instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from model.boxes import batched_nms_padded, decode_deltas, gather_rows
from model.config import ModelConfig


def map_roi_levels(rois: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """mmdet's SingleRoIExtractor level: floor(log2(sqrt(area) / finest_scale + 1e-6)) in [0, num_levels-1].

    Traced, floor(log2(x)) becomes comparisons with powers of two: exact where a graph's Log/Div may not be.
    """
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    if torch.jit.is_tracing():
        x = scale / finest_scale + 1e-6
        levels = torch.zeros_like(x, dtype=torch.int64)
        for level in range(1, num_levels):
            levels = levels + (x >= float(2 ** level)).to(torch.int64)
        return levels
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multilevel_roi_align(feats: list[Tensor], rois: Tensor, levels: Tensor, output_size: int,
                         strides: tuple[int, ...], sampling_ratio: int) -> Tensor:
    """[K, C, S, S]: each RoI ([K, 5] = batch index, x1, y1, x2, y2) pooled from its own level only.

    RoIAlign is mmcv's aligned variant (half-pixel shift, adaptive samples), which is
    `torchvision.ops.roi_align(aligned=True)`. Traced, no level is skipped for being empty (that would
    freeze the example's RoIs into the graph).
    """
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    tracing = torch.jit.is_tracing()
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        index = (levels == level).nonzero().view(-1)
        if tracing:
            pooled = roi_align(feat, rois[index], output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=sampling_ratio, aligned=True)
            out = out.index_put((index,), pooled)
        elif index.numel() > 0:
            out[index] = roi_align(feat, rois[index], output_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=sampling_ratio, aligned=True)
    return out


class LevelRoIAlign:
    """mmdet's SingleRoIExtractor: each RoI [K, 5] pooled (aligned RoIAlign) from the level its size picks."""

    def __init__(self, finest_scale: float, output_size: int, strides: tuple[int, ...], sampling_ratio: int):
        self.finest_scale, self.output_size = finest_scale, output_size
        self.strides, self.sampling_ratio = strides, sampling_ratio

    def __call__(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        levels = map_roi_levels(rois, self.finest_scale, len(self.strides))
        return multilevel_roi_align(feats[:len(self.strides)], rois, levels, self.output_size, self.strides,
                                    self.sampling_ratio)


def class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, candidates: Tensor, iou_threshold: float,
              max_out: int) -> Tensor:
    """mmcv's batched NMS with the classes as groups over the candidate (proposal, class) rows."""
    return batched_nms_padded(boxes, scores, labels, candidates, iou_threshold, max_out)


class MulticlassNMS:
    """mmdet's multiclass_nms per image: (proposal, class) pairs with score > score_thr, class-wise NMS, top max.

    `nms(boxes [B, P*C, 4], scores [B, P*C], labels [P*C], candidates [B, P*C], iou_threshold, max_out)` -> kept
    rows [B, max_out] (rows are (proposal, class) pairs, class fastest) is the NMS operator.
    """

    def __init__(self, score_thr: float, iou_threshold: float, max_per_img: int, nms=class_nms):
        self.score_thr, self.iou_threshold, self.max_per_img, self.nms = score_thr, iou_threshold, max_per_img, nms

    def __call__(self, boxes: Tensor, scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """boxes [B, P, C, 4], scores [B, P, C + 1] (background last, dropped), valid [B, P] -> dets, labels."""
        batch, num, num_classes = boxes.shape[:3]
        cls_scores = scores[..., :num_classes].reshape(batch, num * num_classes)
        flat_boxes = boxes.reshape(batch, num * num_classes, 4)
        candidates = (cls_scores > self.score_thr) & valid.repeat_interleave(num_classes, dim=1)
        labels = torch.arange(num_classes, device=boxes.device).repeat(num)
        keep = self.nms(flat_boxes, cls_scores, labels, candidates, self.iou_threshold, self.max_per_img)
        dets = torch.cat([gather_rows(flat_boxes, keep), gather_rows(cls_scores, keep).unsqueeze(-1)], dim=-1)
        return dets, gather_rows(labels.expand(batch, -1), keep, fill=-1)


def select_detections(boxes: Tensor, scores: Tensor, valid: Tensor, score_thr: float, iou_threshold: float,
                      max_per_img: int) -> tuple[Tensor, Tensor]:
    """MulticlassNMS with the eager NMS, as a function."""
    return MulticlassNMS(score_thr, iou_threshold, max_per_img)(boxes, scores, valid)


class Shared2FCBBoxHead(nn.Module):
    """Flatten, two FC+ReLU, then class logits (background last) and class-specific deltas."""

    def __init__(self, in_channels: int, roi_size: int, fc_channels: int, num_classes: int):
        super().__init__()
        # Registration order = mmdet's state dict order (fc_cls, fc_reg, shared_fcs).
        self.fc_cls = nn.Linear(fc_channels, num_classes + 1)
        self.fc_reg = nn.Linear(fc_channels, num_classes * 4)
        self.shared_fcs = nn.ModuleList([
            nn.Linear(in_channels * roi_size * roi_size, fc_channels),
            nn.Linear(fc_channels, fc_channels),
        ])

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        x = roi_feats.flatten(1)
        for fc in self.shared_fcs:
            x = F.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)


class RoIHead(nn.Module):
    """Proposals to at most `max_per_img` detections per image, in the network-input frame."""

    def __init__(self, cfg: ModelConfig, roi_pool=None, select_detections=None):
        super().__init__()
        self.cfg = cfg
        self.bbox_head = Shared2FCBBoxHead(cfg.fpn_channels, cfg.roi_size, cfg.fc_channels, cfg.num_classes)
        self.roi_pool = roi_pool or LevelRoIAlign(cfg.roi_finest_scale, cfg.roi_size, cfg.roi_strides,
                                                  cfg.roi_sampling_ratio)
        self.select_detections = select_detections or MulticlassNMS(cfg.score_thr, cfg.nms_iou, cfg.max_per_img)

    def forward(self, feats: list[Tensor], proposals: Tensor, valid: Tensor, clip_hw: Tensor) -> tuple[Tensor, Tensor]:
        """feats P2..P5, proposals [B, P, 4], valid [B, P] -> dets [B, max, 5], labels [B, max] (-1 pads)."""
        boxes, scores = self.classify(feats, proposals, clip_hw)
        return self.select_detections(boxes, scores, valid)

    def classify(self, feats: list[Tensor], proposals: Tensor, clip_hw: Tensor) -> tuple[Tensor, Tensor]:
        """Decoded clipped boxes [B, P, num_classes, 4] and softmax scores [B, P, num_classes + 1]."""
        cfg = self.cfg
        batch, num = proposals.shape[:2]
        batch_index = torch.arange(batch, device=proposals.device).to(proposals).view(batch, 1, 1)
        rois = torch.cat([batch_index.expand(batch, num, 1), proposals], dim=-1).view(-1, 5)
        roi_feats = self.roi_pool(feats, rois)
        cls_logits, deltas = self.bbox_head(roi_feats)
        scores = F.softmax(cls_logits, dim=1).view(batch, num, -1)
        boxes = decode_deltas(proposals, deltas.view(batch, num, -1), cfg.rcnn_stds, cfg.max_ratio, clip_hw)
        return boxes, scores
