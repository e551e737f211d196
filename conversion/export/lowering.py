"""Rewrite an Ascend graph's custom ops into standard ONNX (their reference computation) so ONNX Runtime runs it.

This is how the Ascend file is checked without an NPU: each DeformableConv2D, RoiExtractor and
BatchMultiClassNMS node is replaced by a subgraph exported from its torch reference (written from
the op's documented semantics, MODEL_SPEC B.3-B.5) and the result must give the torch model's
detections. The offset re-ordering, the mask and every attribute are read back from the node, so a
wrong layout or attribute in the file shows up as wrong detections. RoiExtractor has two references:
mmdet's (the torch model's) and CANN's kernel as far as standard operators can say (`roi="cann"`): the
detections that move between the two are the best prediction of the om's we can make without an NPU.
"""
from __future__ import annotations

import onnx
import torch
from onnx import helper, numpy_helper, version_converter
from torchvision.ops import deform_conv2d

from conversion.export.ascend import (ROI_REFERENCES, batch_multiclass_nms_reference, roi_extractor_cann_reference,
                                      roi_extractor_reference)
from conversion.export.exporter import trace_onnx
from conversion.export.symbolics import ASCEND_DOMAIN, OPSETS

CUSTOM_OPS = ("DeformableConv2D", "RoiExtractor", "BatchMultiClassNMS")
OPSET = OPSETS["onnxruntime"]


def deformable_conv2d_reference(x, weight, offsets, stride, padding, dilation):
    """DeformableConv2D: offsets [N, 3*taps, H, W] = [x block, y block, mask block] -> DCN v2 in torchvision terms."""
    taps = offsets.shape[1] // 3
    dx, dy, mask = offsets[:, :taps], offsets[:, taps:2 * taps], offsets[:, 2 * taps:]
    interleaved = torch.stack([dy, dx], dim=2).flatten(1, 2)  # [y0, x0, y1, x1, ...]
    return deform_conv2d(x, interleaved, weight, mask=mask, stride=stride, padding=padding, dilation=dilation)


class _Reference(torch.nn.Module):
    def __init__(self, fn, **kwargs):
        super().__init__()
        self.fn, self.kwargs = fn, kwargs

    def forward(self, *args):
        return self.fn(*args, **self.kwargs)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _pair(values) -> tuple[int, int]:
    """The parser's reading of a 2- or 4-element list ([1, 1, sh, sw] for strides) as (h, w)."""
    values = list(values)
    return (values[-2], values[-1]) if len(values) == 4 and values[:2] == [1, 1] else (values[0], values[1])


def reference_model(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto], roi: str = "mmdet") -> onnx.ModelProto:
    """A standard opset-19 ONNX model computing `node` from its inputs `in0..inK` (every dimension symbolic)."""
    a = _attrs(node)
    if node.op_type == "DeformableConv2D":
        if a.get("groups", 1) != 1 or a.get("deformable_groups", 1) != 1:
            raise ValueError("reference supports groups = deformable_groups = 1")
        w = numpy_helper.to_array(weights[node.input[1]])
        pads = list(a["pads"])
        stride, dilation = _pair(a["strides"]), _pair(a.get("dilations", [1, 1]))
        fn = _Reference(deformable_conv2d_reference, stride=stride, padding=(pads[0], pads[1]), dilation=dilation)
        cout, cin, kh, kw = w.shape
        out_h = (9 + 2 * pads[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        out_w = (9 + 2 * pads[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        example = (torch.randn(1, cin, 9, 9), torch.from_numpy(w.copy()), torch.randn(1, 3 * kh * kw, out_h, out_w))
        dynamic = {"in0": [0, 2, 3], "in2": [0, 2, 3]}
    elif node.op_type == "RoiExtractor":
        reference = roi_extractor_cann_reference if roi == "cann" else roi_extractor_reference
        fn = _Reference(reference, finest_scale=float(a["finest_scale"]),
                        output_size=int(a["pooled_height"]), spatial_scales=tuple(a["spatial_scale"]),
                        sample_num=int(a["sample_num"]))
        example = tuple(torch.randn(1, 4, 32 >> i, 32 >> i) for i in range(4)) + (
            torch.tensor([[0, 1.0, 2.0, 60.0, 50.0], [0, 0, 0, 120.0, 100.0]]),)
        dynamic = {f"in{i}": [0, 1, 2, 3] for i in range(4)} | {"in4": [0]}
    elif node.op_type == "BatchMultiClassNMS":
        total = int(a["max_total_size"])
        fn = _Reference(batch_multiclass_nms_reference, score_thr=float(a["score_threshold"]),
                        iou_threshold=float(a["iou_threshold"]), max_per_class=int(a["max_size_per_class"]),
                        max_total=total)
        corners = torch.rand(1, total, 2, 2) * 50
        example = (torch.cat([corners, corners + 10], dim=-1), torch.rand(1, total, 2))
        dynamic = {"in0": [0, 1, 2], "in1": [0, 1, 2]}
    else:
        raise ValueError(f"no reference for {node.op_type}")
    names = [f"in{i}" for i in range(len(example))]
    outputs = [f"out{i}" for i in range(len(node.output))]
    return trace_onnx(fn.eval(), example, names, outputs, dynamic, "onnxruntime")


def _splice(node: onnx.NodeProto, sub: onnx.ModelProto, prefix: str) -> tuple[list, list]:
    """The nodes and initializers of `sub`, renamed so its inputs/outputs are `node`'s and the rest unique."""
    rename = {f"in{i}": name for i, name in enumerate(node.input)}
    rename.update({f"out{i}": name for i, name in enumerate(node.output)})
    produced = {o for n in sub.graph.node for o in n.output}

    def name(value: str) -> str:
        return value if not value else rename.get(value, prefix + value)

    inits = []
    for init in sub.graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = name(init.name)
        inits.append(copy)
    nodes = []
    for n in sub.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = prefix + n.name
        copy.input[:] = [name(i) for i in n.input]
        copy.output[:] = [name(o) for o in n.output]
        nodes.append(copy)
    for i, out in enumerate(sub.graph.output):  # an output passed straight through from an input/initializer
        if out.name not in produced:
            nodes.append(helper.make_node("Identity", [name(out.name)], [node.output[i]], name=f"{prefix}out{i}"))
    return nodes, inits


def lower_ascend_graph(model: onnx.ModelProto, roi: str = "mmdet") -> onnx.ModelProto:
    """A copy of the Ascend graph in standard opset-19 ONNX, each custom node replaced by its reference
    (RoiExtractor's: `roi` = mmdet or cann)."""
    if roi not in ROI_REFERENCES:
        raise ValueError(f"unknown RoiExtractor reference {roi!r}: {', '.join(ROI_REFERENCES)}")
    lowered = onnx.ModelProto()
    lowered.CopyFrom(model)
    for node in lowered.graph.node:
        if node.op_type in CUSTOM_OPS and node.domain == "":
            node.domain = ASCEND_DOMAIN  # keeps the version converter away from them
    lowered.opset_import.append(helper.make_opsetid(ASCEND_DOMAIN, 1))
    lowered = version_converter.convert_version(lowered, OPSET)
    weights = {i.name: i for i in lowered.graph.initializer}
    weights.update({n.output[0]: n.attribute[0].t for n in lowered.graph.node
                    if n.op_type == "Constant" and n.attribute[0].name == "value"})
    nodes, inits = [], []
    for index, node in enumerate(lowered.graph.node):
        if node.domain != ASCEND_DOMAIN:
            nodes.append(node)
            continue
        sub_nodes, sub_inits = _splice(node, reference_model(node, weights, roi), f"lowered{index}/")
        nodes.extend(sub_nodes)
        inits.extend(sub_inits)
    del lowered.graph.node[:]
    lowered.graph.node.extend(nodes)
    lowered.graph.initializer.extend(inits)
    kept = [o for o in lowered.opset_import if o.domain != ASCEND_DOMAIN]
    del lowered.opset_import[:]
    lowered.opset_import.extend(kept)
    del lowered.graph.value_info[:]  # shapes inferred around the custom ops may not hold for their references
    onnx.checker.check_model(lowered, full_check=True)
    return lowered
