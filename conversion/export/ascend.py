"""The Ascend graph (MODEL_SPEC B.3-B.5): RoiExtractor and BatchMultiClassNMS nodes with reference forwards.

Each custom op is a torch.autograd.Function: its symbolic writes the node ATC parses, its forward is
the reference computation in standard operators (the same code `lowering` splices back into the graph
to check the file). The RPN runs one BatchMultiClassNMS per FPN level, as mmdet's per-level NMS
does, rather than the recipe's single across-level call.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor
from torch.onnx import symbolic_helper as sh

import model.roi_head
from conversion.export.nms import NEG_INF, NonMaxSuppression, select_boxes, top_k
from conversion.export.standard import level_top_k, map_roi_levels_exact, multilevel_roi_align_traceable, patched
from conversion.export.symbolics import ASCEND_DOMAIN
from model.boxes import decode_deltas
from model.detector import Detector

RPN_SCORE_THR = 0.0  # the recipe's; sigmoid scores are positive, so no proposal is dropped by it


def take_rows(values: Tensor, index: Tensor) -> Tensor:
    """values [B, N, ...] at non-negative index [B, K] (gather_rows without its padding clamp: opset 11 has no
    integer Clip)."""
    extra = values.shape[2:]
    return values.gather(1, index.reshape(index.shape + (1,) * len(extra)).expand(index.shape + extra))


def roi_extractor_reference(f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, rois: Tensor, finest_scale: float,
                            output_size: int, spatial_scales: tuple[float, ...], sample_num: int) -> Tensor:
    """mmdet's SingleRoIExtractor: each RoI [K, 5] pooled (aligned RoIAlign, avg) from its level of P2..P5."""
    feats = [f0, f1, f2, f3]
    levels = map_roi_levels_exact(rois, finest_scale, len(feats))
    strides = tuple(1.0 / s for s in spatial_scales)
    return multilevel_roi_align_traceable(feats, rois, levels, output_size, strides, sample_num)


def batch_multiclass_nms_reference(boxes: Tensor, scores: Tensor, score_thr: float, iou_threshold: float,
                                   max_per_class: int, max_total: int, select=NonMaxSuppression.apply,
                                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchMultiClassNMS as CANN describes it: per image and class, score > thr, greedy NMS, at most
    max_per_class; classes merged by descending score (ties: lower class*N + box first), first max_total.

    boxes [B, N, C, 4], scores [B, N, C] -> boxes [B, T, 4], scores [B, T], classes [B, T] (float),
    num [B] int32; rows past num are zeros.
    """
    dtype = scores.dtype  # float16 in, float16 out; the selection itself runs on the float32 values
    batch, num, classes = scores.shape
    per_class_boxes = boxes.transpose(1, 2).reshape(batch * classes, num, 4).float()
    class_major = scores.transpose(1, 2).reshape(batch, classes * num).float()
    per_class_scores = class_major.reshape(batch * classes, 1, num)
    selected = select(per_class_boxes, per_class_scores, max_per_class, iou_threshold, score_thr)
    image = torch.div(selected[:, 0], classes, rounding_mode="floor")
    flat = (selected[:, 0] % classes) * num + selected[:, 2]
    kept = torch.full_like(class_major, NEG_INF).index_put((image, flat), class_major[image, flat])
    values, index = top_k(kept, max_total)
    valid = values > NEG_INF
    cls = torch.div(index, num, rounding_mode="floor")
    row = index % num
    out_boxes = take_rows(boxes.reshape(batch, num * classes, 4).float(), row * classes + cls)
    zeros = torch.zeros_like(values)
    out_boxes = torch.where(valid[..., None], out_boxes, torch.zeros_like(out_boxes))
    return (out_boxes.to(dtype), torch.where(valid, values, zeros).to(dtype),
            torch.where(valid, cls.to(values.dtype), zeros).to(dtype), valid.sum(dim=1).to(torch.int32))


class RoiExtractor(torch.autograd.Function):
    """Ascend RoiExtractor(P2, P3, P4, P5, rois) with the recipe's attributes (B.4)."""

    @staticmethod
    def forward(ctx, f0, f1, f2, f3, rois, finest_scale, output_size, spatial_scales, sample_num):
        return roi_extractor_reference(f0, f1, f2, f3, rois, finest_scale, output_size, spatial_scales, sample_num)

    @staticmethod
    def symbolic(g, f0, f1, f2, f3, rois, finest_scale, output_size, spatial_scales, sample_num):
        out = g.op(f"{ASCEND_DOMAIN}::RoiExtractor", f0, f1, f2, f3, rois, aligned_i=1,
                   finest_scale_i=int(finest_scale), pooled_height_i=output_size, pooled_width_i=output_size,
                   pool_mode_s="avg", roi_scale_factor_i=0, sample_num_i=sample_num,
                   spatial_scale_f=list(spatial_scales))
        num_rois, channels = sh._get_tensor_sizes(rois)[0], sh._get_tensor_sizes(f0)[1]
        out.setType(f0.type().with_sizes([num_rois, channels, output_size, output_size]))
        return out


class BatchMultiClassNMS(torch.autograd.Function):
    """Ascend BatchMultiClassNMS(boxes [B,N,C,4], scores [B,N,C]) -> boxes, scores, classes, num (B.5)."""

    @staticmethod
    def forward(ctx, boxes, scores, score_thr, iou_threshold, max_per_class, max_total):
        return batch_multiclass_nms_reference(boxes, scores, score_thr, iou_threshold, max_per_class, max_total,
                                              select_boxes)

    @staticmethod
    def symbolic(g, boxes, scores, score_thr, iou_threshold, max_per_class, max_total):
        outs = g.op(f"{ASCEND_DOMAIN}::BatchMultiClassNMS", boxes, scores, score_threshold_f=score_thr,
                    iou_threshold_f=iou_threshold, max_size_per_class_i=max_per_class,
                    max_total_size_i=max_total, outputs=4)
        batch = sh._get_tensor_sizes(scores)[0]
        for out, sizes in zip(outs[:3], ([batch, max_total, 4], [batch, max_total], [batch, max_total])):
            out.setType(scores.type().with_sizes(sizes))
        outs[3].setType(scores.type().with_dtype(torch.int32).with_sizes([batch]))
        return outs


def ascend_nms(boxes: Tensor, scores: Tensor, score_thr: float, iou_threshold: float, max_per_class: int,
               max_total: int, fp16: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """BatchMultiClassNMS, fed float16 as older CANN releases require when `fp16` (as the recipe does)."""
    if fp16:
        boxes, scores = boxes.half(), scores.half()
    out_boxes, out_scores, classes, num = BatchMultiClassNMS.apply(boxes, scores, score_thr, iou_threshold,
                                                                   max_per_class, max_total)
    return out_boxes.float(), out_scores.float(), classes.float(), num


def rpn_forward(self, feats: list[Tensor], clip_hw: Tensor, nms_fp16: bool) -> tuple[Tensor, Tensor, Tensor]:
    """RPNHead.forward with one BatchMultiClassNMS per level, then the best nms_post over all levels."""
    cfg = self.cfg
    boxes, scores, valid = [], [], []
    for level, feat in enumerate(feats):
        score, delta, anchor = self.level_outputs(feat, level)
        score, index = level_top_k(score, cfg.rpn_nms_pre)
        box = decode_deltas(take_rows(anchor, index), take_rows(delta, index), cfg.rpn_stds, cfg.max_ratio,
                            clip_hw)  # [B, k, 1, 4]
        k = int(score.shape[1])  # static: ATC compiles fixed shapes
        box, score, _, num = ascend_nms(box, score[..., None], RPN_SCORE_THR, cfg.rpn_nms_iou, k, k, nms_fp16)
        boxes.append(box)
        scores.append(score)
        valid.append(torch.arange(k, device=score.device)[None, :] < num[:, None])
    boxes, scores, valid = torch.cat(boxes, dim=1), torch.cat(scores, dim=1), torch.cat(valid, dim=1)
    ranked, index = top_k(torch.where(valid, scores, torch.full_like(scores, NEG_INF)), cfg.rpn_nms_post)
    keep = ranked > NEG_INF
    proposals = take_rows(boxes, index)
    proposals = torch.where(keep[..., None], proposals, torch.zeros_like(proposals))
    return proposals, torch.where(keep, ranked, torch.zeros_like(ranked)), keep


def make_roi_extract(finest_scale: float):
    """The Detector's multilevel RoIAlign as one RoiExtractor node (the node maps RoIs to levels itself)."""

    def roi_extract(feats, rois, levels, output_size, strides, sampling_ratio):
        return RoiExtractor.apply(*feats[:4], rois, finest_scale, output_size, tuple(1.0 / s for s in strides),
                                  sampling_ratio)

    return roi_extract


def make_select_detections(fp16: bool):
    """The box head's class-wise NMS as one BatchMultiClassNMS; rows past its count become padding."""

    def select_detections(boxes, scores, valid, score_thr, iou_threshold, max_per_img):
        num_classes = boxes.shape[2]
        cls_scores = scores[..., :num_classes] * valid[..., None].to(scores.dtype)  # padding proposals: score 0
        out_boxes, out_scores, classes, num = ascend_nms(boxes, cls_scores, score_thr, iou_threshold, max_per_img,
                                                         max_per_img, fp16)
        real = torch.arange(max_per_img, device=boxes.device)[None, :] < num[:, None]
        dets = torch.cat([out_boxes, out_scores[..., None]], dim=-1) * real[..., None].to(out_boxes.dtype)
        labels = torch.where(real, classes.round().to(torch.int64), torch.full_like(classes, -1, dtype=torch.int64))
        return dets, labels

    return select_detections


@contextlib.contextmanager
def ascend_export_mode(detector: Detector, nms_fp16: bool = False):
    """While active, `detector` computes through the Ascend ops (their reference forwards in eager mode)."""
    rpn = detector.rpn_head
    # An instance attribute shadows the class's forward.
    rpn.forward = functools.partial(rpn_forward, rpn, nms_fp16=nms_fp16)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(patched(model.roi_head, "multilevel_roi_align",
                                        make_roi_extract(detector.cfg.roi_finest_scale)))
            stack.enter_context(patched(model.roi_head, "select_detections", make_select_detections(nms_fp16)))
            yield
    finally:
        del rpn.forward
