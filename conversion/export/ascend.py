"""The Ascend graph (MODEL_SPEC B.3-B.5): RoiExtractor and BatchMultiClassNMS nodes with reference forwards.

Each custom op is a torch.autograd.Function: its symbolic writes the node ATC parses, its forward is
the reference computation in standard operators (the same code `lowering` splices back into the graph
to check the file). The Detector is built with three parts that call them (`ascend_parts`): the RPN
runs one BatchMultiClassNMS per FPN level, as mmdet's per-level NMS does, rather than the recipe's
single across-level call. BatchMultiClassNMS is fed float16: the 310P's kernel has float16 inputs only
(CANN's aic-ascend310p-ops-info.json), and every sibling recipe casts with `.half()`.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.onnx import symbolic_helper as sh
from torchvision.ops import roi_align

from conversion.export.nms import NEG_INF, NonMaxSuppression, select_boxes
from conversion.export.symbolics import ASCEND_DOMAIN
from model.boxes import take_rows, top_k
from model.config import ModelConfig
from model.roi_head import map_roi_levels, multilevel_roi_align

RPN_SCORE_THR = 0.0  # the recipe's; sigmoid scores are positive, so no proposal is dropped by it
ROI_REFERENCES = ("mmdet", "cann")


def roi_extractor_reference(f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, rois: Tensor, finest_scale: float,
                            output_size: int, spatial_scales: tuple[float, ...], sample_num: int) -> Tensor:
    """mmdet's SingleRoIExtractor: each RoI [K, 5] pooled (aligned RoIAlign, avg) from its level of P2..P5."""
    feats = [f0, f1, f2, f3]
    levels = map_roi_levels(rois, finest_scale, len(feats))
    strides = tuple(1.0 / s for s in spatial_scales)
    return multilevel_roi_align(feats, rois, levels, output_size, strides, sample_num)


def cann_roi_levels(rois: Tensor, finest_scale: float, num_levels: int) -> Tensor:
    """CANN's RoiExtractor level (tbe/impl/roi_extractor.py `map_roi_levels`, `where_and_nonzero`): sqrt(area) in
    float32, rounded to float16, then level 0 when <= 2*finest, l when in (finest*2^l, finest*2^(l+1)], the last
    above finest*2^(L-1): `<=` bounds at 112 / 224 / 448 where mmdet's floor(log2) puts 112 in level 1."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])).to(torch.float16).float()
    levels = torch.zeros_like(scale, dtype=torch.int64)
    for level in range(1, num_levels):
        levels = levels + (scale > float(finest_scale * 2 ** level)).to(torch.int64)
    return levels


def roi_extractor_cann_reference(f0: Tensor, f1: Tensor, f2: Tensor, f3: Tensor, rois: Tensor, finest_scale: float,
                                 output_size: int, spatial_scales: tuple[float, ...], sample_num: int) -> Tensor:
    """RoiExtractor as CANN 8.1.RC1's 310P kernel computes it, as far as standard operators can say: its level
    rule (`cann_roi_levels`) and its RoIAlign, which shifts by -0.5 (aligned) and then clamps the RoI's width and
    height to >= 1 feature pixel (`vec_max` with 1 - roi_end_mode, roi_end_mode 0) where mmcv's aligned RoIAlign
    does not clamp. That is torchvision's unaligned RoIAlign (start x * s, size max(w * s, 1)) on RoIs moved by
    -0.5 / s. Not modelled: the kernel's float16 sample-grid count and its float16 arithmetic inside."""
    feats = [f0, f1, f2, f3]
    levels = cann_roi_levels(rois, finest_scale, len(feats))
    out = f0.new_zeros((rois.shape[0], f0.shape[1], output_size, output_size))
    for level, (feat, scale) in enumerate(zip(feats, spatial_scales)):
        index = (levels == level).nonzero().view(-1)
        shift = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0], dtype=rois.dtype) * (0.5 / scale)
        pooled = roi_align(feat, rois[index] - shift, output_size, spatial_scale=scale, sampling_ratio=sample_num,
                           aligned=False)
        out = out.index_put((index,), pooled)
    return out


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
    """BatchMultiClassNMS, fed float16 when `fp16` (the 310P kernel's only input type, as the recipes do)."""
    if fp16:
        boxes, scores = boxes.half(), scores.half()
    out_boxes, out_scores, classes, num = BatchMultiClassNMS.apply(boxes, scores, score_thr, iou_threshold,
                                                                   max_per_class, max_total)
    return out_boxes.float(), out_scores.float(), classes.float(), num


class AscendProposals:
    """The RPN's `select_proposals`: one BatchMultiClassNMS per level, then the best nms_post over all levels."""

    def __init__(self, cfg: ModelConfig, fp16: bool):
        self.iou_threshold, self.max_out, self.fp16 = cfg.rpn_nms_iou, cfg.rpn_nms_post, fp16

    def __call__(self, boxes: Tensor, scores: Tensor, levels: Tensor, level_sizes: list[int]
                 ) -> tuple[Tensor, Tensor, Tensor]:
        kept_boxes, kept_scores, valid, start = [], [], [], 0
        for k in (int(n) for n in level_sizes):  # static: ATC compiles fixed shapes
            box, score, _, num = ascend_nms(boxes[:, start:start + k, None, :], scores[:, start:start + k, None],
                                            RPN_SCORE_THR, self.iou_threshold, k, k, self.fp16)
            start += k
            kept_boxes.append(box)
            kept_scores.append(score)
            valid.append(torch.arange(k, device=score.device)[None, :] < num[:, None])
        boxes, scores, valid = torch.cat(kept_boxes, dim=1), torch.cat(kept_scores, dim=1), torch.cat(valid, dim=1)
        ranked, index = top_k(torch.where(valid, scores, torch.full_like(scores, NEG_INF)), self.max_out)
        keep = ranked > NEG_INF
        proposals = take_rows(boxes, index)
        proposals = torch.where(keep[..., None], proposals, torch.zeros_like(proposals))
        return proposals, torch.where(keep, ranked, torch.zeros_like(ranked)), keep


class RoiExtractorPool:
    """The RoI head's `roi_pool` as one RoiExtractor node (the node maps RoIs to levels itself)."""

    def __init__(self, cfg: ModelConfig):
        self.finest_scale, self.output_size = cfg.roi_finest_scale, cfg.roi_size
        self.spatial_scales = tuple(1.0 / s for s in cfg.roi_strides)
        self.sampling_ratio = cfg.roi_sampling_ratio

    def __call__(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        return RoiExtractor.apply(*feats[:4], rois, self.finest_scale, self.output_size, self.spatial_scales,
                                  self.sampling_ratio)


class AscendDetections:
    """The RoI head's `select_detections` as one BatchMultiClassNMS; rows past its count become padding."""

    def __init__(self, cfg: ModelConfig, fp16: bool):
        self.score_thr, self.iou_threshold, self.max_per_img, self.fp16 = (cfg.score_thr, cfg.nms_iou,
                                                                           cfg.max_per_img, fp16)

    def __call__(self, boxes: Tensor, scores: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        num_classes, max_per_img = boxes.shape[2], self.max_per_img
        cls_scores = scores[..., :num_classes] * valid[..., None].to(scores.dtype)  # padding proposals: score 0
        out_boxes, out_scores, classes, num = ascend_nms(boxes, cls_scores, self.score_thr, self.iou_threshold,
                                                         max_per_img, max_per_img, self.fp16)
        real = torch.arange(max_per_img, device=boxes.device)[None, :] < num[:, None]
        dets = torch.cat([out_boxes, out_scores[..., None]], dim=-1) * real[..., None].to(out_boxes.dtype)
        labels = torch.where(real, classes.round().to(torch.int64), torch.full_like(classes, -1, dtype=torch.int64))
        return dets, labels


def ascend_parts(cfg: ModelConfig, nms_fp16: bool = True) -> dict:
    """The Detector's parts for the Ascend graph."""
    return {"select_proposals": AscendProposals(cfg, nms_fp16), "roi_pool": RoiExtractorPool(cfg),
            "select_detections": AscendDetections(cfg, nms_fp16)}
