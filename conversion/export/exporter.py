"""Trace the Detector into an ONNX file for ONNX Runtime (standard opset 19) or for Ascend ATC."""
from __future__ import annotations

import io
import os
import warnings
from functools import partial

import onnx
import torch
from torch import Tensor, nn

from conversion.export.nms import class_nms, level_nms
from conversion.export.symbolics import ASCEND_DOMAIN, OPSETS, deform_conv_symbolic
from model.config import PREPROCESS, ModelConfig
from model.detector import Detector
from model.roi_head import MulticlassNMS
from model.rpn import LevelNMS, level_top_k_dynamic

TARGETS = ("onnxruntime", "ascend")
SIZE_MODES = ("static", "mmdet")
MMDET_EXAMPLE_HW = (800, 1216)  # a typical mmdet-mode input to trace (keep-ratio 1333x800, padded to /32)


class CanvasGraph(nn.Module):
    """Ascend graph: `input` only; boxes are clipped to the S x S canvas, as the recipe's static graph does."""

    def __init__(self, detector: Detector, size: int):
        super().__init__()
        self.detector = detector
        self.size = size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        clip_hw = torch.full((images.shape[0], 2), float(self.size), dtype=images.dtype)
        return self.detector(images, clip_hw)


def onnxruntime_parts(cfg: ModelConfig, size_mode: str = "static") -> dict:
    """The Detector's parts for the ONNX Runtime graph: its two NMS steps as ONNX NonMaxSuppression (the rest of
    the model traces as it is); in mmdet mode (any input height and width) the per-level top-k as TopK(min(N, k))."""
    parts = {"select_proposals": LevelNMS(cfg.rpn_nms_iou, cfg.rpn_nms_post,
                                          nms=partial(level_nms, num_groups=len(cfg.anchor_strides))),
             "select_detections": MulticlassNMS(cfg.score_thr, cfg.nms_iou, cfg.max_per_img,
                                                nms=partial(class_nms, num_classes=cfg.num_classes))}
    if size_mode == "mmdet":
        parts["per_level_top_k"] = level_top_k_dynamic
    return parts


def graph_detector(detector: Detector, target: str, nms_fp16: bool = True, size_mode: str = "static") -> Detector:
    """`detector`'s weights in a Detector built with the `target` graph's operators, in eval mode."""
    if target == "onnxruntime":
        parts = onnxruntime_parts(detector.cfg, size_mode)
    else:
        from conversion.export.ascend import ascend_parts
        parts = ascend_parts(detector.cfg, nms_fp16)
    built = Detector(detector.cfg, **parts)
    built.load_state_dict(detector.state_dict())
    return built.eval()


def example_input(batch: int, hw: tuple[int, int], seed: int = 0) -> tuple[Tensor, Tensor]:
    """A tracing example: normalised noise on the whole input (only shapes matter, no value is frozen)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn((batch, 3, hw[0], hw[1]), generator=gen)
    return images, torch.tensor([[float(hw[0]), float(hw[1])]]).repeat(batch, 1)


def trace_onnx(module: nn.Module, args: tuple, input_names: list[str], output_names: list[str],
               dynamic_axes: dict | None, target: str) -> onnx.ModelProto:
    """`module` traced on `args` into ONNX with the `target`'s opset and deform_conv2d symbolic, in memory."""
    buffer = io.BytesIO()
    with deform_conv_symbolic(target), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: each is covered by a test
        torch.onnx.export(module, args, buffer, input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=OPSETS[target], do_constant_folding=True,
                          dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def to_default_domain(model: onnx.ModelProto) -> onnx.ModelProto:
    """Move the Ascend custom ops to the default domain, where ATC's ONNX parser looks them up."""
    for node in model.graph.node:
        if node.domain == ASCEND_DOMAIN:
            node.domain = ""
    kept = [o for o in model.opset_import if o.domain != ASCEND_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return model


def share_constants(model: onnx.ModelProto, min_bytes: int = 4096) -> onnx.ModelProto:
    """One copy of each large constant value (the 13 DCN all-ones masks come in three shapes)."""
    first: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    nodes = []
    for node in model.graph.node:
        value = node.attribute[0].t if node.op_type == "Constant" and node.attribute[0].name == "value" else None
        if value is not None and len(value.raw_data) >= min_bytes:
            key = (value.data_type, tuple(value.dims), value.raw_data)
            if key in first:
                rename[node.output[0]] = first[key]
                continue
            first[key] = node.output[0]
        nodes.append(node)
    if rename:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
    return model


def fix_output_shapes(model: onnx.ModelProto, batch: int | None) -> onnx.ModelProto:
    """State the contract's output shapes (a custom op's outputs otherwise leave them symbolic)."""
    for out, dims in zip(model.graph.output, ([batch, 100, 5], [batch, 100])):
        shape = out.type.tensor_type.shape
        for dim, value in zip(shape.dim, dims):
            dim.Clear()
            if value is None:
                dim.dim_param = "batch"
            else:
                dim.dim_value = value
    return model


def export_onnx(detector: Detector, path: str | os.PathLike, target: str = "onnxruntime", batch: int | None = 1,
                size: int = PREPROCESS.static_size, nms_fp16: bool = True, size_mode: str = "static"
                ) -> onnx.ModelProto:
    """Write the `target` graph of `detector` to `path` and return it; batch None = dynamic batch (onnxruntime).

    The ONNX Runtime graph passes `onnx.checker` (full check); the Ascend graph holds ATC's custom
    ops in the default domain, which no ONNX checker knows, so it is checked before they move there.
    `nms_fp16` (Ascend): BatchMultiClassNMS fed float16, the 310P kernel's only input type. `size_mode` mmdet
    (ONNX Runtime): input height and width are dynamic too (each batch one padded shape), for mmdet's protocol.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose from {', '.join(TARGETS)}")
    if target == "ascend" and batch is None:
        raise ValueError("the Ascend graph needs a fixed batch (ATC compiles static shapes)")
    if size_mode not in SIZE_MODES or (size_mode == "mmdet" and target != "onnxruntime"):
        raise ValueError(f"size mode {size_mode!r}: the onnxruntime target takes static or mmdet, ascend static")
    built = graph_detector(detector, target, nms_fp16, size_mode)
    images, clip_hw = example_input(batch or 2, MMDET_EXAMPLE_HW if size_mode == "mmdet" else (size, size))
    if target == "onnxruntime":
        graph, args = built, (images, clip_hw)
        names = ["input", "clip_hw"]
    else:
        # A new wrapper module starts in training mode, and the exporter would run BN in it.
        graph, args = CanvasGraph(built, size).eval(), (images,)
        names = ["input"]
    dynamic = None
    if batch is None or size_mode == "mmdet":
        dynamic = {name: ({0: "batch"} if batch is None else {}) for name in names + ["dets", "labels"]}
        if size_mode == "mmdet":
            dynamic["input"].update({2: "height", 3: "width"})
        dynamic = {name: axes for name, axes in dynamic.items() if axes}
    model = trace_onnx(graph, args, names, ["dets", "labels"], dynamic, target)
    model = fix_output_shapes(share_constants(model), batch)
    onnx.checker.check_model(model, full_check=True)
    if target == "ascend":
        model = to_default_domain(model)
    model.producer_name = "dcn-evaluator conversion.pth2onnx"
    onnx.save(model, os.fspath(path))
    return model
