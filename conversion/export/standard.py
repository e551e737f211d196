"""Export-mode substitutions for the standard ONNX graph (ONNX Runtime): same function, traceable form.

The Detector's data-dependent steps become graph operators; nothing that depends on the traced
example's values is frozen into the graph (an empty FPN level, a count of proposals).
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor
from torchvision.ops import roi_align

import model.roi_head
import model.rpn
from conversion.export.nms import class_nms, level_nms, top_k
from model.config import ModelConfig


def map_roi_levels_exact(rois: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """floor(log2(x)) clamped to [0, L-1] as comparisons with powers of two: exact, where Log/Div may not be."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    x = scale / finest_scale + 1e-6
    levels = torch.zeros_like(x, dtype=torch.int64)
    for level in range(1, num_levels):
        levels = levels + (x >= float(2 ** level)).to(torch.int64)
    return levels


def multilevel_roi_align_traceable(feats: list[Tensor], rois: Tensor, levels: Tensor, output_size: int,
                                   strides: tuple[int, ...], sampling_ratio: int) -> Tensor:
    """The Detector's multi-level RoIAlign without its Python branch on empty levels."""
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        index = (levels == level).nonzero().view(-1)
        pooled = roi_align(feat, rois[index], output_size, spatial_scale=1.0 / stride,
                           sampling_ratio=sampling_ratio, aligned=True)
        out = out.index_put((index,), pooled)
    return out


def level_top_k(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The k best scores of each row in descending order; traced as TopK(k) rather than a full sort."""
    n = scores.shape[1]
    if n <= k:
        return scores, torch.arange(n, device=scores.device).expand(scores.shape[0], n)
    return top_k(scores, k)


def make_padded_nms(cfg: ModelConfig):
    """`batched_nms_padded` with the Detector's signature, dispatching to the RPN or box-head ONNX form."""
    num_levels = len(cfg.anchor_strides)

    def batched_nms_padded(boxes, scores, groups, valid, iou_threshold, max_out):
        if valid is None:  # RPN: groups are FPN levels
            return level_nms(boxes, scores, groups, num_levels, iou_threshold, max_out)
        if not torch.jit.is_tracing():  # box head: groups must be the classes, class fastest
            expected = torch.arange(cfg.num_classes).repeat(scores.shape[1] // cfg.num_classes)
            if not torch.equal(groups.cpu(), expected):
                raise ValueError("unexpected class layout in the box head's NMS")
        return class_nms(boxes, scores, cfg.num_classes, valid, iou_threshold, max_out)

    return batched_nms_padded


@contextlib.contextmanager
def patched(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def standard_export_mode(cfg: ModelConfig):
    """While active, the Detector computes the same detections with graph-friendly operators."""
    nms = make_padded_nms(cfg)
    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(model.rpn, "batched_nms_padded", nms))
        stack.enter_context(patched(model.rpn, "level_top_k", level_top_k))
        stack.enter_context(patched(model.roi_head, "batched_nms_padded", nms))
        stack.enter_context(patched(model.roi_head, "map_roi_levels", map_roi_levels_exact))
        stack.enter_context(patched(model.roi_head, "multilevel_roi_align", multilevel_roi_align_traceable))
        yield
