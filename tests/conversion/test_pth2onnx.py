"""pth2onnx: the command line, the Ascend graph's structure, and its custom ops replaced by their reference."""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("torch")

from conversion_helpers import network_inputs, ort_session  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

from conversion.export.lowering import lower_ascend_graph  # noqa: E402
from evaluation.matching import match_detections  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Block strides of the 13 DCN layers: the first block of layer2, layer3 and layer4 is strided.
DCN_STRIDES = [2, 1, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1]
DCN_SIDES_512 = [64] * 4 + [32] * 6 + [16] * 3  # their output size on a 512 canvas (strides 8, 16, 32)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversion", "pth2onnx", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def dims(value) -> list:
    return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]


def producers(model) -> dict:
    return {o: n for n in model.graph.node for o in n.output}


def constant_value(model, name: str) -> np.ndarray:
    node = producers(model).get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(node.attribute[0].t)
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def test_usage_errors_are_one_line(tmp_path, capsys):
    from conversion.__main__ import main

    def error(*args: str) -> str:
        assert main(["pth2onnx", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ")
        return err

    assert error("--checkpoint", str(tmp_path / "none.pth"), "--output", "m.onnx") == (
        f"error: no such checkpoint file ({tmp_path / 'none.pth'})")
    (tmp_path / "m.pth").write_bytes(b"x")
    assert "not a readable PyTorch checkpoint" in error("--checkpoint", str(tmp_path / "m.pth"), "--output",
                                                       str(tmp_path / "m.onnx"))
    assert error("--checkpoint", "m.pth", "--output", "m.onnx", "--target", "ascend", "--batch", "dynamic").endswith(
        "(--batch)")
    assert error("--checkpoint", "m.pth", "--output", "m.onnx", "--batch", "0").endswith("(--batch)")
    assert error("--checkpoint", "m.pth", "--output", "m.onnx", "--input-size", "500").endswith("(--input-size)")
    assert error("--checkpoint", "m.pth", "--output", str(tmp_path / "no" / "m.onnx")).endswith(
        f"({tmp_path / 'no'})")


@pytest.mark.slow
def test_cli_writes_a_checked_ascend_file(parity_checkpoint, tmp_path):
    out = tmp_path / "dcn_ascend_bs1.onnx"
    proc = cli("--checkpoint", str(parity_checkpoint), "--output", str(out), "--target", "ascend", "--batch", "1",
               "--input-size", "256")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(out) and out.is_file()
    assert "13 DeformableConv2D, 1 RoiExtractor, 6 BatchMultiClassNMS; opset 11" in proc.stderr
    model = onnx.load(str(out))
    made_by = producers(model)
    assert all(made_by[n.input[0]].op_type == "Cast" for n in model.graph.node if n.op_type == "BatchMultiClassNMS")
    assert "custom ops are lowered" in proc.stderr


@pytest.fixture(scope="module")
def ascend(ascend_512_b2):
    return onnx.load(str(ascend_512_b2))


@pytest.mark.slow
def test_ascend_graph_interface(ascend):
    inits = {i.name for i in ascend.graph.initializer}
    inputs = [v for v in ascend.graph.input if v.name not in inits]
    assert [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in inputs] == [("input", 1, [2, 3, 512, 512])]
    assert [(v.name, v.type.tensor_type.elem_type, dims(v)) for v in ascend.graph.output] == [
        ("dets", 1, [2, 100, 5]), ("labels", 7, [2, 100])]
    assert [(o.domain, o.version) for o in ascend.opset_import] == [("", 11)]
    ops = Counter(n.op_type for n in ascend.graph.node)
    assert (ops["DeformableConv2D"], ops["RoiExtractor"], ops["BatchMultiClassNMS"]) == (13, 1, 6)
    assert not ops.keys() & {"DeformConv", "RoiAlign", "NonMaxSuppression"}
    assert all(n.domain == "" for n in ascend.graph.node)


@pytest.mark.slow
def test_ascend_deformable_conv_nodes(ascend):
    """B.3: (input, weight, offsets) with offsets = Concat(x block, y block, all-ones mask), recipe attributes."""
    made_by = producers(ascend)
    weights = {i.name: list(i.dims) for i in ascend.graph.initializer}
    nodes = [n for n in ascend.graph.node if n.op_type == "DeformableConv2D"]
    assert len(nodes) == 13
    for node, stride, side in zip(nodes, DCN_STRIDES, DCN_SIDES_512):
        assert attrs(node) == {"strides": [stride, stride], "pads": [1, 1], "dilations": [1, 1], "groups": 1,
                               "deformable_groups": 1, "bias": 0, "data_format": b"NCHW", "im2col_step": 32}
        assert weights[node.input[1]][2:] == [3, 3] and "conv2.weight" in node.input[1]
        concat = made_by[node.input[2]]
        assert concat.op_type == "Concat" and attrs(concat)["axis"] == 1
        x_part, y_part = (made_by[name] for name in concat.input[:2])
        # Gather index 1 of the (y, x) pairs first, then index 0: x block, y block.
        assert [(g.op_type, int(constant_value(ascend, g.input[1]))) for g in (x_part, y_part)] == [
            ("Gather", 1), ("Gather", 0)]
        assert x_part.input[0] == y_part.input[0] and attrs(x_part)["axis"] == 2
        mask = constant_value(ascend, concat.input[2])
        assert mask.shape == (2, 9, side, side) and mask.dtype == np.float32 and (mask == 1).all()


@pytest.mark.slow
def test_ascend_roi_extractor_and_nms_nodes(ascend):
    (roi,) = [n for n in ascend.graph.node if n.op_type == "RoiExtractor"]
    assert attrs(roi) == {"aligned": 1, "finest_scale": 56, "pooled_height": 7, "pooled_width": 7,
                          "pool_mode": b"avg", "roi_scale_factor": 0, "sample_num": 0,
                          "spatial_scale": pytest.approx([0.25, 0.125, 0.0625, 0.03125])}
    assert [name.split("/")[3] for name in roi.input[:4]] == [f"fpn_convs.{i}" for i in range(4)]  # P2..P5
    nms = [n for n in ascend.graph.node if n.op_type == "BatchMultiClassNMS"]
    assert all(len(n.output) == 4 for n in nms)
    # 512 canvas: levels P2..P6 have 64^2, 32^2, 16^2, 8^2, 4^2 cells x 3 anchors; top 1000 per level.
    per_level = [min(1000, 3 * (512 // s) ** 2) for s in (4, 8, 16, 32, 64)]
    for node, k in zip(nms[:5], per_level):
        assert attrs(node) == {"score_threshold": 0.0, "iou_threshold": pytest.approx(0.7),
                               "max_size_per_class": k, "max_total_size": k}
    assert attrs(nms[5]) == {"score_threshold": pytest.approx(0.05), "iou_threshold": 0.5,
                             "max_size_per_class": 100, "max_total_size": 100}


@pytest.mark.slow
def test_ascend_graph_with_reference_ops_gives_torch_detections(ascend_512_b2_fp32, photos, torch_reference):
    """Each custom node replaced by its reference computation (float32 NMS inputs, mmdet's RoiExtractor): ONNX
    Runtime then gives torch's detections."""
    lowered = lower_ascend_graph(onnx.load(str(ascend_512_b2_fp32)))
    assert not {n.op_type for n in lowered.graph.node} & {"DeformableConv2D", "RoiExtractor", "BatchMultiClassNMS"}
    session = ort_session(lowered.SerializeToString())
    pair = [p for p in photos if p.stem in ("coffee", "logo")]
    images, _, _ = network_inputs(pair, 512)
    dets, labels = session.run(["dets", "labels"], {"input": images})
    worst = 0.0
    for b, photo in enumerate(pair):
        ref = torch_reference(photo, 512)
        result = match_detections(ref[0], ref[1], dets[b], labels[b])
        assert result.ref_count > 0 and (result.matched, result.extra) == (result.ref_count, 0), (photo.name, result)
        worst = max(worst, result.max_score_diff)
    print(f"\nascend graph (reference ops) vs torch, 512, batch 2: max score diff {worst:.2e}")


@pytest.mark.slow
def test_ascend_nms_is_fed_float16_by_default(ascend, photos):
    """The 310P's BatchMultiClassNMS kernel takes float16 only: every NMS input is a Cast to float16."""
    made_by = producers(ascend)
    nms = [n for n in ascend.graph.node if n.op_type == "BatchMultiClassNMS"]
    for node in nms:
        for name in node.input:
            cast = made_by[name]
            assert cast.op_type == "Cast" and attrs(cast)["to"] == onnx.TensorProto.FLOAT16
    images, _, _ = network_inputs(photos[2:4], 512)
    dets, labels = ort_session(lower_ascend_graph(ascend).SerializeToString()).run(["dets", "labels"],
                                                                                  {"input": images})
    assert dets.shape == (2, 100, 5) and (labels >= 0).sum() > 0 and ((labels >= 0) == (dets[..., 4] > 0)).all()
