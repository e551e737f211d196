"""ONNX Runtime vs the torch model on the oracle photographs: several sizes, batch 1/4/8, round trips.

A torch detection is matched by an ONNX one of the same class with every corner within 0.05 px and
the score within 1e-4 (evaluation.matching); every detection must match, none may be left over.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from conversion.export.exporter import export_onnx  # noqa: E402
from evaluation.matching import match_detections  # noqa: E402
from conversion_helpers import network_inputs, ort_session  # noqa: E402

pytestmark = pytest.mark.slow


def assert_all_matched(what: str, ref, got) -> tuple[float, float]:
    result = match_detections(ref[0], ref[1], got[0], got[1])
    assert result.ref_count > 0, f"{what}: the torch model found nothing, the comparison would be empty"
    assert (result.matched, result.extra) == (result.ref_count, 0), f"{what}: {result}"
    return result.max_box_diff, result.max_score_diff


def batch_cases(photos):
    """(paths, flips) for batch 1, 4 and 8: 8 = the five photographs and three of them mirrored."""
    return {1: [(p, False) for p in photos], 4: [(p, False) for p in photos[:4]],
            8: [(p, False) for p in photos] + [(p, True) for p in photos[:3]]}


@pytest.fixture(scope="module")
def ort_512(ort_dynamic_512):
    return ort_session(ort_dynamic_512)


@pytest.fixture(scope="module")
def ort_512_single(ort_512):
    """ONNX Runtime's answer for one image at a time, per (path, flip)."""
    cache = {}

    def single(path, flip):
        if (path, flip) not in cache:
            images, clip, _ = network_inputs([path], 512, flip)
            cache[(path, flip)] = tuple(a[0] for a in ort_512.run(["dets", "labels"], {"input": images,
                                                                                     "clip_hw": clip}))
        return cache[(path, flip)]

    return single


@pytest.mark.parametrize("batch", [1, 4, 8])
def test_dynamic_batch_matches_torch(batch, photos, ort_512, ort_512_single, torch_reference):
    """Exported with a dynamic batch (traced at 2): each image of a batch of 1, 4 or 8 gets torch's detections,
    and exactly what the same graph gives it alone."""
    worst_box = worst_score = 0.0
    cases = batch_cases(photos)[batch]
    for start in range(0, len(cases), batch):
        group = cases[start:start + batch]
        inputs = [network_inputs([p], 512, f) for p, f in group]
        images = np.concatenate([i[0] for i in inputs])
        clip = np.concatenate([i[1] for i in inputs])
        dets, labels = ort_512.run(["dets", "labels"], {"input": images, "clip_hw": clip})
        assert dets.shape == (len(group), 100, 5) and labels.dtype == np.int64
        for b, (path, flip) in enumerate(group):
            box, score = assert_all_matched(f"{path.name} flip={flip} batch={batch}",
                                            torch_reference(path, 512, flip), (dets[b], labels[b]))
            worst_box, worst_score = max(worst_box, box), max(worst_score, score)
            alone = ort_512_single(path, flip)
            assert np.array_equal(dets[b], alone[0]) and np.array_equal(labels[b], alone[1])
    print(f"\nonnxruntime vs torch, 512, batch {batch}: {len(cases)} images, max box diff {worst_box:.2e} px, "
          f"max score diff {worst_score:.2e}")


def test_static_canvas_round_trip_640(detector, photos, torch_reference, export_dir):
    """A fixed batch of 4 at 640, traced on noise, then fed photographs of other sizes and aspect ratios."""
    path = export_dir / "ort_640_b4.onnx"
    model = export_onnx(detector, path, target="onnxruntime", batch=4, size=640)
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input]
    assert dims == [[4, 3, 640, 640], [4, 2]]
    images, clip, _ = network_inputs(photos[1:5], 640)
    dets, labels = ort_session(path).run(["dets", "labels"], {"input": images, "clip_hw": clip})
    worst_score = 0.0
    for b, photo in enumerate(photos[1:5]):
        _, score = assert_all_matched(photo.name, torch_reference(photo, 640), (dets[b], labels[b]))
        worst_score = max(worst_score, score)
    print(f"\nonnxruntime vs torch, 640, batch 4: max score diff {worst_score:.2e}")


def test_full_size_1216(detector, photos, torch_reference, export_dir):
    """The default canvas, one non-square photograph (coffee: 1216x811 centred, pad_top 202)."""
    path = export_dir / "ort_1216_b1.onnx"
    model = export_onnx(detector, path, target="onnxruntime", batch=1, size=1216)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 19
    coffee = next(p for p in photos if p.stem == "coffee")
    images, clip, metas = network_inputs([coffee], 1216)
    assert (metas[0].pad_top, metas[0].new_h) == (202, 811)
    dets, labels = ort_session(path).run(["dets", "labels"], {"input": images, "clip_hw": clip})
    box, score = assert_all_matched("coffee 1216", torch_reference(coffee, 1216), (dets[0], labels[0]))
    print(f"\nonnxruntime vs torch, 1216, batch 1: max box diff {box:.2e} px, max score diff {score:.2e}")


def mmdet_inputs(paths, flips):
    import cv2

    from model.preprocess import clip_sizes, load_image, preprocess
    pairs = [preprocess(cv2.flip(load_image(p), 1) if f else load_image(p), "mmdet") for p, f in zip(paths, flips)]
    return np.stack([x for x, _ in pairs]), clip_sizes([m for _, m in pairs])


def test_mmdet_mode_graph_matches_torch_at_every_shape(detector, photos, ort_mmdet):
    """mmdet mode: each photograph at its own keep-ratio shape (800 x 800, 800 x 1216), batch 1 and batch 2."""
    onnx_model = onnx.load(str(ort_mmdet))
    dims = [d.dim_param or d.dim_value for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    session = ort_session(ort_mmdet)
    shapes = set()
    for photo in photos:
        for paths, flips in (([photo], [False]), ([photo, photo], [False, True])):
            images, clip = mmdet_inputs(paths, flips)
            shapes.add(images.shape[2:])
            with torch.no_grad():
                ref = detector(torch.from_numpy(images), torch.from_numpy(clip))
            got = session.run(["dets", "labels"], {"input": images, "clip_hw": clip})
            for b in range(len(paths)):
                box, score = assert_all_matched(f"{photo.name} mmdet batch {len(paths)} row {b}",
                                                (ref[0][b].numpy(), ref[1][b].numpy()), (got[0][b], got[1][b]))
        print(f"\n{photo.name} {images.shape[2]}x{images.shape[3]}: max box diff {box:.2e} px, score {score:.2e}")
    assert len(shapes) >= 2  # more than the traced shape
