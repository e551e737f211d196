"""Second stage: RoIAlign on the mmdet-chosen FPN level, Shared2FC box head, class-wise NMS."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from model.boxes import batched_nms_padded, decode_deltas, gather_rows
from model.config import ModelConfig


def map_roi_levels(rois: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """mmdet's SingleRoIExtractor level: floor(log2(sqrt(area) / finest_scale + 1e-6)) in [0, num_levels-1]."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


def multilevel_roi_align(feats: list[Tensor], rois: Tensor, levels: Tensor, output_size: int,
                         strides: tuple[int, ...], sampling_ratio: int) -> Tensor:
    """[K, C, S, S]: each RoI ([K, 5] = batch index, x1, y1, x2, y2) pooled from its own level only.

    RoIAlign is mmcv's aligned variant (half-pixel shift, adaptive samples), which is
    `torchvision.ops.roi_align(aligned=True)`.
    """
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        index = (levels == level).nonzero().view(-1)
        if index.numel() > 0:
            out[index] = roi_align(feat, rois[index], output_size, spatial_scale=1.0 / stride,
                                   sampling_ratio=sampling_ratio, aligned=True)
    return out


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

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.bbox_head = Shared2FCBBoxHead(cfg.fpn_channels, cfg.roi_size, cfg.fc_channels, cfg.num_classes)

    def forward(self, feats: list[Tensor], proposals: Tensor, valid: Tensor, clip_hw: Tensor) -> tuple[Tensor, Tensor]:
        """feats P2..P5, proposals [B, P, 4], valid [B, P] -> dets [B, max, 5], labels [B, max] (-1 pads)."""
        boxes, scores = self.classify(feats, proposals, clip_hw)
        return select_detections(boxes, scores, valid, self.cfg.score_thr, self.cfg.nms_iou, self.cfg.max_per_img)

    def classify(self, feats: list[Tensor], proposals: Tensor, clip_hw: Tensor) -> tuple[Tensor, Tensor]:
        """Decoded clipped boxes [B, P, num_classes, 4] and softmax scores [B, P, num_classes + 1]."""
        cfg = self.cfg
        batch, num = proposals.shape[:2]
        batch_index = torch.arange(batch, device=proposals.device).to(proposals).view(batch, 1, 1)
        rois = torch.cat([batch_index.expand(batch, num, 1), proposals], dim=-1).view(-1, 5)
        levels = map_roi_levels(rois, cfg.roi_finest_scale, len(cfg.roi_strides))
        roi_feats = multilevel_roi_align(feats[:len(cfg.roi_strides)], rois, levels, cfg.roi_size,
                                         cfg.roi_strides, cfg.roi_sampling_ratio)
        cls_logits, deltas = self.bbox_head(roi_feats)
        scores = F.softmax(cls_logits, dim=1).view(batch, num, -1)
        boxes = decode_deltas(proposals, deltas.view(batch, num, -1), cfg.rcnn_stds, cfg.max_ratio, clip_hw)
        return boxes, scores


def select_detections(boxes: Tensor, scores: Tensor, valid: Tensor, score_thr: float, iou_threshold: float,
                      max_per_img: int) -> tuple[Tensor, Tensor]:
    """mmdet's multiclass_nms per image: (proposal, class) pairs with score > score_thr, class-wise NMS, top max.

    The background column (last) is dropped; pairs of invalid (padding) proposals never take part.
    """
    batch, num, num_classes = boxes.shape[:3]
    cls_scores = scores[..., :num_classes].reshape(batch, num * num_classes)
    flat_boxes = boxes.reshape(batch, num * num_classes, 4)
    candidates = (cls_scores > score_thr) & valid.repeat_interleave(num_classes, dim=1)
    labels = torch.arange(num_classes, device=boxes.device).repeat(num)
    keep = batched_nms_padded(flat_boxes, cls_scores, labels, candidates, iou_threshold, max_per_img)
    dets = torch.cat([gather_rows(flat_boxes, keep), gather_rows(cls_scores, keep).unsqueeze(-1)], dim=-1)
    return dets, gather_rows(labels.expand(batch, -1), keep, fill=-1)
