"""Each export building block against torchvision / the Detector's own function, run in ONNX Runtime."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from torchvision.ops import deform_conv2d  # noqa: E402

import model.boxes  # noqa: E402
import model.roi_head  # noqa: E402
from conversion.export.ascend import batch_multiclass_nms_reference  # noqa: E402
from conversion.export.lowering import deformable_conv2d_reference, lower_ascend_graph  # noqa: E402
from conversion.export.nms import class_nms, level_nms  # noqa: E402
from conversion.export.symbolics import deform_conv_symbolic  # noqa: E402


class Fn(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def export(fn, args, target="onnxruntime", dynamic=None, opset=19) -> onnx.ModelProto:
    names = [f"in{i}" for i in range(len(args))]
    buffer = io.BytesIO()
    with deform_conv_symbolic(target), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Fn(fn).eval(), args, buffer, input_names=names, dynamic_axes=dynamic,
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


def run(model: onnx.ModelProto, *args) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})


@pytest.mark.parametrize("stride", [1, 2])
def test_deform_conv_symbolic_matches_torchvision(stride):
    gen = torch.Generator().manual_seed(stride)
    x = torch.randn(2, 6, 13, 11, generator=gen)
    w = torch.randn(5, 6, 3, 3, generator=gen)
    out_h, out_w = (13 - 1) // stride + 1, (11 - 1) // stride + 1
    offset = torch.randn(2, 18, out_h, out_w, generator=gen) * 3.0  # fractional, many taps off the map

    def fn(x, offset):
        return deform_conv2d(x, offset, w, stride=stride, padding=1)

    graph = export(fn, (x, offset))
    (node,) = [n for n in graph.graph.node if n.op_type == "DeformConv"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["strides"] == [stride, stride] and attrs["pads"] == [1, 1, 1, 1] and attrs["kernel_shape"] == [3, 3]
    (got,) = run(graph, x, offset)
    assert np.abs(got - fn(x, offset).numpy()).max() <= 1e-5


def test_ascend_deformable_conv_reorders_offsets():
    """The Ascend node's offsets are [x block, y block, ones]; lowered back, it equals torchvision's DCN v1."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 10, 10, generator=gen)
    w = torch.randn(3, 4, 3, 3, generator=gen)
    offset = torch.randn(2, 18, 5, 5, generator=gen) * 2.0
    expected = deform_conv2d(x, offset, w, stride=2, padding=1).numpy()
    dy, dx = offset.view(2, 9, 2, 5, 5).unbind(2)
    reordered = torch.cat([dx, dy, torch.ones_like(dx)], dim=1)
    direct = deformable_conv2d_reference(x, w, reordered, (2, 2), (1, 1), (1, 1)).numpy()
    assert np.abs(direct - expected).max() <= 1e-5
    graph = export(lambda x, o: deform_conv2d(x, o, w, stride=2, padding=1), (x, offset), target="ascend", opset=11)
    for node in graph.graph.node:
        if node.domain == "ascend":
            node.domain = ""
    ops = [n.op_type for n in graph.graph.node]
    assert "DeformableConv2D" in ops and "DeformConv" not in ops
    (got,) = run(lower_ascend_graph(graph), x, offset)
    assert np.abs(got - expected).max() <= 1e-5


def square_rois(sides: torch.Tensor) -> torch.Tensor:
    zeros = torch.zeros_like(sides)
    return torch.stack([zeros, zeros, zeros, sides, sides], 1)


def test_roi_levels_traced_exactly_at_power_of_two_boundaries():
    """Traced, the level is comparisons with powers of two; the graph gives the eager floor(log2) levels."""
    sides = torch.tensor([50.0, 111.99, 112.0, 112.01, 223.99, 224.0, 447.99, 448.0, 448.01, 900.0])
    rois = square_rois(torch.cat([sides, torch.rand(500) * 1000]))
    expected = model.roi_head.map_roi_levels(rois, 56.0, 4)
    (got,) = run(export(lambda r: model.roi_head.map_roi_levels(r, 56.0, 4), (rois,), dynamic={"in0": [0]}), rois)
    assert np.array_equal(got, expected.numpy())


def test_cann_roi_levels_round_the_scale_to_float16_and_keep_the_boundary_below():
    """CANN's RoiExtractor: sqrt(area) in float16, level l for scale in (56*2^l, 56*2^(l+1)]; mmdet: [.., ..)."""
    from conversion.export.ascend import cann_roi_levels
    sides = torch.tensor([111.99, 112.0, 112.03, 112.1, 224.0, 448.0, 448.1, 448.2])
    rois = square_rois(sides)
    assert model.roi_head.map_roi_levels(rois, 56.0, 4).tolist() == [0, 1, 1, 1, 2, 3, 3, 3]
    # 112.03 rounds to 112.0 in float16 (spacing 1/16 there), 448.1 to 448.0 (spacing 1/4), 448.2 to 448.25
    assert cann_roi_levels(rois, 56.0, 4).tolist() == [0, 0, 0, 1, 1, 2, 2, 3]


def test_cann_roi_align_clamps_thin_rois_to_one_feature_pixel():
    """Where a RoI is under one feature pixel wide, CANN's RoIAlign pools over one pixel, mmcv's over less."""
    from conversion.export.ascend import roi_extractor_cann_reference, roi_extractor_reference
    gen = torch.Generator().manual_seed(4)
    feats = [torch.randn(1, 4, 64 >> i, 64 >> i, generator=gen) for i in range(4)]
    scales = (0.25, 0.125, 0.0625, 0.03125)
    wide = torch.tensor([[0, 10.0, 10.0, 60.0, 50.0]])  # 12.5 x 10 feature pixels on level 0: no clamp
    thin = torch.tensor([[0, 10.0, 10.0, 12.0, 60.0]])  # 0.5 feature pixel wide
    for rois, equal in ((wide, True), (thin, False)):
        mmdet = roi_extractor_reference(*feats, rois, 56.0, 7, scales, 0)
        cann = roi_extractor_cann_reference(*feats, rois, 56.0, 7, scales, 0)
        assert torch.allclose(mmdet, cann, atol=1e-5) is equal


def random_rois(n: int, batch: int, size: float, gen) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size * 0.8
    wh = torch.rand(n, 2, generator=gen) ** 2 * size * 0.9 + 1
    idx = torch.randint(0, batch, (n, 1), generator=gen).float()
    return torch.cat([idx, xy, (xy + wh).clamp(max=size)], dim=1)


def test_multilevel_roi_align_traced_with_empty_levels():
    """Traced with every RoI on level 0, the graph must still pool later RoIs from their own levels."""
    gen = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 8, 256 >> i, 256 >> i, generator=gen) for i in range(4)]
    strides = (4, 8, 16, 32)

    def fn(f0, f1, f2, f3, rois):
        levels = model.roi_head.map_roi_levels(rois, 56.0, 4)
        return model.roi_head.multilevel_roi_align([f0, f1, f2, f3], rois, levels, 7, strides, 0)

    small = torch.tensor([[0, 10.0, 10.0, 40.0, 30.0], [1, 5.0, 5.0, 20.0, 60.0]])
    graph = export(fn, (*feats, small), dynamic={"in4": [0]})
    rois = random_rois(300, 2, 1024, gen)
    levels = model.roi_head.map_roi_levels(rois, 56.0, 4)
    assert set(levels.tolist()) == {0, 1, 2, 3}
    expected = model.roi_head.multilevel_roi_align(feats, rois, levels, 7, strides, 0).numpy()
    (got,) = run(graph, *feats, rois)
    assert np.abs(got - expected).max() <= 1e-6


def random_boxes(batch: int, n: int, gen, size: float = 300.0) -> torch.Tensor:
    centre = torch.rand(batch, n, 2, generator=gen) * size
    half = torch.rand(batch, n, 2, generator=gen) * 40 + 2
    return torch.cat([centre - half, centre + half], dim=-1).clamp(min=0)


def test_level_nms_equals_the_models_per_level_nms():
    gen = torch.Generator().manual_seed(5)
    boxes, scores = random_boxes(2, 600, gen), torch.rand(2, 600, generator=gen)
    levels = torch.arange(5).repeat_interleave(120)
    expected = model.boxes.batched_nms_padded(boxes, scores, levels, None, 0.7, 400)
    graph = export(lambda b, s: level_nms(b, s, levels, 0.7, 400, num_groups=5), (boxes, scores))
    (got,) = run(graph, boxes, scores)
    assert np.array_equal(got, expected.numpy())
    assert (got >= 0).sum() < 2 * 600  # some boxes were suppressed


@pytest.mark.parametrize("batch_run", [1, 3])
def test_class_nms_per_image_and_class(batch_run):
    """Box-head NMS: (proposal, class) rows, candidates mask; traced at batch 2, run at another batch."""
    gen = torch.Generator().manual_seed(11)
    classes, proposals = 80, 60

    def inputs(batch):
        boxes = random_boxes(batch, proposals * classes, gen, 200.0)
        scores = torch.rand(batch, proposals * classes, generator=gen) ** 4
        valid = torch.rand(batch, proposals, generator=gen) > 0.1
        return boxes, scores, (scores > 0.05) & valid.repeat_interleave(classes, dim=1)

    def fn(boxes, scores, candidates):
        labels = torch.arange(classes).repeat(proposals)
        return class_nms(boxes, scores, labels, candidates, 0.5, 100, num_classes=classes)

    graph = export(fn, inputs(2), dynamic={f"in{i}": [0] for i in range(3)})
    boxes, scores, candidates = inputs(batch_run)
    labels = torch.arange(classes).repeat(proposals)
    expected = model.boxes.batched_nms_padded(boxes, scores, labels, candidates, 0.5, 100)
    assert torch.equal(fn(boxes, scores, candidates), expected)
    (got,) = run(graph, boxes, scores, candidates)
    assert np.array_equal(got, expected.numpy())


def test_batch_multiclass_nms_reference_matches_per_class_nms():
    """BatchMultiClassNMS reference: per image and class, score > thr, NMS, cap; merged by score; zero padding."""
    from torchvision.ops import nms
    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(2, 50 * 4, gen).view(2, 50, 4, 4)
    scores = torch.rand(2, 50, 4, generator=gen)
    out_boxes, out_scores, out_classes, num = batch_multiclass_nms_reference(boxes, scores, 0.3, 0.4, 7, 20)
    for b in range(2):
        kept = []
        for c in range(4):
            rows = (scores[b, :, c] > 0.3).nonzero().view(-1)
            for r in rows[nms(boxes[b, rows, c], scores[b, rows, c], 0.4)[:7]].tolist():
                kept.append((scores[b, r, c].item(), c, r))
        kept = sorted(kept, key=lambda t: -t[0])[:20]
        assert num[b].item() == len(kept)
        for i, (score, c, r) in enumerate(kept):
            assert out_scores[b, i].item() == score and out_classes[b, i].item() == c
            assert torch.equal(out_boxes[b, i], boxes[b, r, c])
        assert not out_scores[b, len(kept):].any() and not out_boxes[b, len(kept):].any()
