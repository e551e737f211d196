"""COCOeval wrapper: 12 stats and per-class AP on the union of results."""
from __future__ import annotations

import json

import pytest

from tasks.coco_eval import STAT_NAMES, evaluate


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
    with pytest.raises(ValueError, match=r"\(--evaluator\)"):
        evaluate(str(selftest_set[0]), [], evaluator="nope")
