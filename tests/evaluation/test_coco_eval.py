"""COCOeval wrapper: 12 stats and per-class AP on the union of results."""
from __future__ import annotations

import json

import pytest

from evaluation.coco_eval import STAT_NAMES, evaluate


def gt_results(ann):
    data = json.loads(open(ann).read())
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in data["annotations"] if not a["iscrowd"]]


def test_perfect_results_give_ap_one_and_every_stat(selftest_set):
    ann, _ = selftest_set
    out = evaluate(str(ann), gt_results(ann))
    assert list(out["stats"]) == list(STAT_NAMES)
    assert out["stats"]["AP"] == 1.0
    assert all(out["stats"][k] == pytest.approx(1.0, abs=1e-12) for k in ("AP50", "AP75", "APs", "APm", "APl"))
    assert set(out["per_class"]) == {"person", "car", "stop sign", "bottle", "toothbrush"}
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in out["per_class"].values())


def test_no_detections_is_zero_not_a_crash(selftest_set):
    ann, _ = selftest_set
    assert evaluate(str(ann), [])["stats"]["AP"] == 0.0


def test_a_shifted_box_lowers_ap(selftest_set):
    ann, _ = selftest_set
    res = gt_results(ann)
    x, y, w, h = res[0]["bbox"]
    res[0]["bbox"] = [x + w * 0.6, y, w, h]
    assert evaluate(str(ann), res)["stats"]["AP"] < 1.0


def test_unknown_evaluator_is_a_one_line_error(selftest_set):
    with pytest.raises(ValueError, match=r"\(--coco-eval\)"):
        evaluate(str(selftest_set[0]), [], evaluator="nope")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generated val2017-like set: all 80 classes, crowd boxes, images without boxes or detections."""
    from orchestrator.generated_set import detections_as_results, make_annotations, make_detections
    data = make_annotations(300, seed=3)
    path = tmp_path_factory.mktemp("generated") / "instances.json"
    path.write_text(json.dumps(data))
    dets = make_detections(data, seed=4)
    return path, data, dets, detections_as_results(dets)


def test_the_generated_set_has_every_awkward_case(generated):
    _, data, dets, _ = generated
    with_boxes = {a["image_id"] for a in data["annotations"]}
    assert len({a["category_id"] for a in data["annotations"]}) == 80 and len(set(dets[:, 6])) == 80
    assert sum(a["iscrowd"] for a in data["annotations"]) > 0
    assert any(im["id"] not in with_boxes for im in data["images"])
    assert any(im["id"] not in set(dets[:, 0]) for im in data["images"])
    assert len(dets) > 10000


def test_both_evaluators_give_the_same_12_numbers_bit_for_bit(generated):
    path, _, _, results = generated
    fast = evaluate(str(path), results, "faster-coco-eval")
    ref = evaluate(str(path), results, "pycocotools")
    assert (fast["evaluator"], ref["evaluator"]) == ("faster-coco-eval", "pycocotools")
    assert fast["stats"] == ref["stats"]  # exact equality of 12 floats, no tolerance
    assert fast["per_class"] == ref["per_class"]
    assert 0.0 < ref["stats"]["AP"] < 1.0 and fast["detections"] == len(results)


def test_the_precision_arrays_are_equal_after_the_first_point_fix(generated):
    """The C++ precision differs from pycocotools' where a curve's first counted detection is its only leading hit."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from evaluation.coco_eval import faster_curves

    path, _, _, results = generated
    _, raw, fixed, recall = faster_curves(str(path), results)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ref = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        ref.evaluate()
        ref.accumulate()
    want = ref.eval["precision"]
    differing = raw != want
    assert differing.any()  # the case occurs in this set
    assert set(raw[differing]) == {1.0} and set(want[differing]) == {1.0 - 2.0 ** -52}
    assert np.array_equal(fixed, want)
    assert np.array_equal(recall, ref.eval["recall"])
