"""Trace the Detector into an ONNX file for ONNX Runtime (standard opset 19) or for Ascend ATC."""
from __future__ import annotations

import io
import os
import warnings

import onnx
import torch
from torch import Tensor, nn

from conversion.export.symbolics import ASCEND_DOMAIN, OPSETS, deform_conv_symbolic
from model.config import PREPROCESS
from model.detector import Detector

TARGETS = ("onnxruntime", "ascend")


class CanvasGraph(nn.Module):
    """Ascend graph: `input` only; boxes are clipped to the S x S canvas, as the recipe's static graph does."""

    def __init__(self, detector: Detector, size: int):
        super().__init__()
        self.detector = detector
        self.size = size

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        clip_hw = torch.full((images.shape[0], 2), float(self.size), dtype=images.dtype)
        return self.detector(images, clip_hw)


def example_input(batch: int, size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A tracing example: normalised noise on the whole canvas (only shapes matter, no value is frozen)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn((batch, 3, size, size), generator=gen)
    return images, torch.full((batch, 2), float(size))


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
                size: int = PREPROCESS.static_size, nms_fp16: bool = False) -> onnx.ModelProto:
    """Write the `target` graph of `detector` to `path` and return it; batch None = dynamic batch (onnxruntime).

    The ONNX Runtime graph passes `onnx.checker` (full check); the Ascend graph holds ATC's custom
    ops in the default domain, which no ONNX checker knows, so it is checked before they move there.
    """
    from conversion.export.standard import standard_export_mode

    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}: choose from {', '.join(TARGETS)}")
    if target == "ascend" and batch is None:
        raise ValueError("the Ascend graph needs a fixed batch (ATC compiles static shapes)")
    detector = detector.eval()
    images, clip_hw = example_input(batch or 2, size)
    if target == "onnxruntime":
        graph, args = detector, (images, clip_hw)
        names = ["input", "clip_hw"]
        mode = standard_export_mode(detector.cfg)
    else:
        # A new wrapper module starts in training mode, and the exporter would run BN in it.
        graph, args = CanvasGraph(detector, size).eval(), (images,)
        names = ["input"]
        from conversion.export.ascend import ascend_export_mode
        mode = ascend_export_mode(detector, nms_fp16=nms_fp16)
    dynamic = None
    if batch is None:
        dynamic = {name: {0: "batch"} for name in names + ["dets", "labels"]}
    with mode:
        model = trace_onnx(graph, args, names, ["dets", "labels"], dynamic, target)
    model = fix_output_shapes(share_constants(model), batch)
    onnx.checker.check_model(model, full_check=True)
    if target == "ascend":
        model = to_default_domain(model)
    model.producer_name = "dcn-evaluator conversion.pth2onnx"
    onnx.save(model, os.fspath(path))
    return model
