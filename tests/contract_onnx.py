"""A tiny ONNX model that keeps the detection contract, built with onnx.helper (no weights needed)."""
from __future__ import annotations

from pathlib import Path


def write_tiny_onnx(path: Path, fixed_batch: int | None = None, with_clip: bool = True) -> Path:
    """An ONNX file keeping the detection contract: one box per image, the top-left quarter of its clip
    region, score 0.9, label 2 (COCO category 3); the other 99 rows are padding."""
    import onnx
    from onnx import TensorProto, helper

    batch = fixed_batch or "B"
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, "H", "W"])]
    if with_clip:
        inputs.append(helper.make_tensor_value_info("clip_hw", TensorProto.FLOAT, [batch, 2]))
    const = lambda name, dtype, dims, vals: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=helper.make_tensor(name + "_v", dtype, dims, vals))
    labels = [2] + [-1] * 99
    nodes = [
        const("i0", TensorProto.INT64, [1], [0]), const("i1", TensorProto.INT64, [1], [1]),
        const("half", TensorProto.FLOAT, [], [0.5]), const("zero", TensorProto.FLOAT, [], [0.0]),
        const("p9", TensorProto.FLOAT, [], [0.9]), const("tile99", TensorProto.INT64, [3], [1, 99, 1]),
        const("labels1", TensorProto.INT64, [1, 100], labels),
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "i1"], ["mean1"]),  # [B,1], keeps `input` in the graph
        helper.make_node("Mul", ["mean1", "zero"], ["z"]),
        helper.make_node("Add", ["z", "p9"], ["score"]),
    ]
    if with_clip:
        nodes += [helper.make_node("Gather", ["clip_hw", "i1"], ["cw"], axis=1),
                  helper.make_node("Gather", ["clip_hw", "i0"], ["ch"], axis=1)]
    else:  # without clip_hw the graph clips to its input: use the input's H and W
        nodes += [helper.make_node("Shape", ["input"], ["ishape"]),
                  const("i2", TensorProto.INT64, [1], [2]), const("i3", TensorProto.INT64, [1], [3]),
                  helper.make_node("Gather", ["ishape", "i3"], ["w64"]), helper.make_node("Gather", ["ishape", "i2"], ["h64"]),
                  helper.make_node("Cast", ["w64"], ["w1"], to=TensorProto.FLOAT),
                  helper.make_node("Cast", ["h64"], ["h1"], to=TensorProto.FLOAT),
                  helper.make_node("Add", ["z", "w1"], ["cw"]), helper.make_node("Add", ["z", "h1"], ["ch"])]
    nodes += [
        helper.make_node("Mul", ["cw", "half"], ["hw"]), helper.make_node("Mul", ["ch", "half"], ["hh"]),
        helper.make_node("Concat", ["z", "z", "hw", "hh", "score"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "i1"], ["row3"]),
        helper.make_node("Mul", ["row3", "zero"], ["row0"]),
        helper.make_node("Tile", ["row0", "tile99"], ["pad"]),
        helper.make_node("Concat", ["row3", "pad"], ["dets"], axis=1),
        helper.make_node("Shape", ["score"], ["sshape"]),
        helper.make_node("Slice", ["sshape", "i0", "i1"], ["bdim"]),
        helper.make_node("Concat", ["bdim", "i1"], ["lrep"], axis=0),
        helper.make_node("Tile", ["labels1", "lrep"], ["labels"]),
    ]
    outputs = [helper.make_tensor_value_info("dets", TensorProto.FLOAT, [batch, 100, 5]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [batch, 100])]
    graph = helper.make_graph(nodes, "tiny_detector", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
