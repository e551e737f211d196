"""TIDE's breakdown on a hand-made image with one error of each kind, and the AP points each fix gives back."""
from __future__ import annotations

import pytest

from evaluation.tide import breakdown, classify


def box(x, y, w=100, h=100):
    return [x, y, w, h]


def hand_made() -> tuple[dict, list[dict]]:
    gts = [(1, box(0, 0)),        # found (and found again: a duplicate)
           (2, box(200, 0)),      # boxed well, called class 1: Cls
           (1, box(0, 200)),      # nothing near it of its class: Miss
           (1, box(200, 200)),    # boxed 40 px off: Loc
           (1, box(0, 400), 1)]   # a crowd box: a detection on it is ignored
    annotations = [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                    "iscrowd": rest[0] if rest else 0} for k, (c, b, *rest) in enumerate(gts)]
    dets = [(1, box(0, 0), 0.9),        # true positive
            (1, box(2, 2), 0.8),        # Dupl
            (1, box(200, 0), 0.7),      # Cls
            (1, box(240, 200), 0.6),    # Loc: IoU 0.43 with its class's box
            (1, box(500, 500, 50, 50), 0.5),  # Bkg
            (3, box(0, 240), 0.45),     # Both: IoU 0.43 with a box of another class
            (1, box(0, 400), 0.44)]     # on the crowd box: ignored
    results = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]
    results.append({"image_id": 2, "category_id": 1, "bbox": box(10, 10), "score": 0.4})  # Bkg: no ground truth
    images = [{"id": 1, "width": 640, "height": 640}, {"id": 2, "width": 640, "height": 640}]
    categories = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def ap_points(precisions_at: list[tuple[float, float]]) -> float:
    """101-point AP from (recall up to, precision) steps."""
    points = [next((p for r, p in precisions_at if t / 100 <= r + 1e-12), 0.0) for t in range(101)]
    return sum(points) / 101 * 100


def test_each_error_is_classified_as_made():
    annotation, results = hand_made()
    outcome = classify(annotation, results)
    image = outcome.per_image[1]
    assert image["tp"] == [0]
    assert (image["Dupl"], image["Cls"], image["Loc"], image["Bkg"], image["Both"]) == ([1], [2], [3], [4], [5])
    assert image["Miss"] == [2]  # the ground truth at (0, 200); the crowd detection (6) has no verdict
    assert outcome.per_image[2]["Bkg"] == [7]


def test_dap_of_each_fix():
    annotation, results = hand_made()
    out = breakdown(annotation, results)
    assert out["counts"] == {"Cls": 1, "Loc": 1, "Both": 1, "Dupl": 1, "Bkg": 2, "Miss": 1}
    # class 1 has 3 boxes and its first detection is its only true positive; class 2 nothing; class 3 has no
    # box and, as in COCOeval, does not count
    base = ap_points([(1 / 3, 1.0)]) / 2
    assert out["ap50"] == pytest.approx(base)
    dap = out["dAP"]
    assert dap["Cls"] == pytest.approx(100 / 2)  # class 2's box found by the fixed detection: AP 100
    # Loc fixed: class 1 is T F F T -> precision 1 to recall 1/3, then 2/4 to 2/3
    assert dap["Loc"] == pytest.approx(ap_points([(1 / 3, 1.0), (2 / 3, 0.5)]) / 2 - base)
    assert dap["Miss"] == pytest.approx(ap_points([(1 / 2, 1.0)]) / 2 - base)  # class 1 down to 2 boxes
    # suppressing false positives that all score below the only true positive gives nothing back
    assert dap["Dupl"] == dap["Bkg"] == dap["Both"] == 0.0
