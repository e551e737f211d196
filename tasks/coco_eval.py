"""Box AP with COCOeval, once, on the union of a job's results."""
from __future__ import annotations

import contextlib
import io

import numpy as np

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
EVALUATORS = ("pycocotools",)


def evaluate(annotation_path: str, results: list[dict], evaluator: str = "pycocotools") -> dict:
    """COCOeval bbox on every image of the annotation file: {"stats", "per_class", "evaluator"}.

    `stats` maps the 12 COCOeval names to floats (-1 where COCO has no ground truth for the range);
    `per_class` maps category name to AP (None where the class has no ground truth).
    """
    if evaluator != "pycocotools":
        raise ValueError(f"unknown evaluator {evaluator!r} (--evaluator): choose from {', '.join(EVALUATORS)}")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_path)
        if results:
            dt = gt.loadRes([dict(r) for r in results])  # loadRes adds keys in place
        else:  # loadRes refuses an empty list; no detection is a valid (zero) answer
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[gt.cats[cat_id]["name"]] = float(np.mean(p)) if p.size else None
    return {
        "evaluator": evaluator,
        "stats": {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)},
        "per_class": per_class,
        "images": len(ev.params.imgIds),
        "detections": len(results),
    }
