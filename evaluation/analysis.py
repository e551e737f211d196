"""Why AP is what it is: COCO's precision-recall curves, TIDE's breakdown and the images with most errors.

Every number is JSON-friendly so that it goes into report.json first and the plots only draw it.
The curves are COCOeval's own precision arrays (faster-coco-eval, corrected to pycocotools' values,
see coco_eval.py), at area "all" and 100 detections an image.
"""
from __future__ import annotations

import numpy as np

from evaluation.coco_eval import faster_curves
from evaluation.tide import ERROR_TYPES, breakdown, classify

GALLERY_SCORE = 0.3  # detections drawn and counted in the gallery: a detector's usual display threshold
GALLERY_IMAGES = 8
WEAKEST = 10
_ALL_AREAS, _MAX_DETS = 0, -1


def _mean_curve(curves: np.ndarray) -> list[float] | None:
    """The mean over classes of [R, K] precision curves, classes without ground truth (-1) left out."""
    valid = curves[:, (curves > -1).all(axis=0)]
    return [round(float(v), 4) for v in valid.mean(axis=1)] if valid.shape[1] else None


def pr_curves(annotation: dict, results: list[dict]) -> dict:
    """Recall thresholds, the all-class curves at IoU .50 and .75, and the weakest classes' curves at .50:.95."""
    gt, _, precision, _ = faster_curves(annotation, results)
    p = precision[:, :, :, _ALL_AREAS, _MAX_DETS]  # [T, R, K]
    cat_ids = sorted(gt.getCatIds())
    names = [gt.cats[c]["name"] for c in cat_ids]
    per_class = []
    for k, name in enumerate(names):
        curve = p[:, :, k]
        if (curve > -1).all():
            per_class.append((float(curve.mean()), name, k))
    weakest = sorted(per_class)[:WEAKEST]
    return {
        "recall": [round(float(r), 2) for r in np.linspace(0, 1, 101)],
        "iou50": _mean_curve(p[0]),
        "iou75": _mean_curve(p[5]),
        "weakest": [{"class": name, "ap": ap, "precision": [round(float(v), 4) for v in p[:, :, k].mean(axis=0)]}
                    for ap, name, k in weakest],
    }


def gallery(annotation: dict, results: list[dict], score: float = GALLERY_SCORE, n: int = GALLERY_IMAGES) -> list[dict]:
    """The `n` images with most false positives plus misses among detections scoring >= `score` (TIDE's
    verdicts at that threshold), each with its detections and ground truth to draw."""
    kept = [r for r in results if r["score"] >= score]
    outcome = classify(annotation, kept)
    anns: dict[int, list] = {}
    for a in annotation["annotations"]:
        anns.setdefault(int(a["image_id"]), []).append(a)
    names = {c["id"]: c["name"] for c in annotation["categories"]}
    files = {int(im["id"]): im.get("file_name", "") for im in annotation["images"]}
    rows = []
    for image_id, verdicts in outcome.per_image.items():
        fp = sum(len(verdicts.get(k, [])) for k in ERROR_TYPES if k != "Miss")
        miss = len(verdicts.get("Miss", []))
        if fp + miss:
            rows.append((-(fp + miss), -fp, image_id, verdicts, fp, miss))
    out = []
    for _, _, image_id, verdicts, fp, miss in sorted(rows)[:n]:
        verdict_of = {i: kind for kind, idx in verdicts.items() if kind != "Miss" for i in idx}
        gts = [a for a in anns.get(image_id, []) if not a.get("iscrowd", 0)]
        missed = set(verdicts.get("Miss", []))
        out.append({
            "image_id": image_id, "file_name": files.get(image_id, ""), "false_positives": fp, "misses": miss,
            "detections": [{"bbox": kept[i]["bbox"], "class": names.get(kept[i]["category_id"], "?"),
                            "score": round(float(kept[i]["score"]), 3), "verdict": verdict_of[i]}
                           for i in sorted(verdict_of)],
            "ground_truth": [{"bbox": g["bbox"], "class": names.get(g["category_id"], "?"), "missed": k in missed}
                             for k, g in enumerate(gts)],
        })
    return out


def error_analysis(annotation: dict, results: list[dict]) -> dict:
    """report.json's "analysis": PR curves, TIDE's breakdown, and the gallery's images."""
    tide = breakdown(annotation, results)
    return {"pr": pr_curves(annotation, results),
            "tide": {"ap50": tide["ap50"], "dAP": tide["dAP"], "counts": tide["counts"]},
            "gallery": {"score": GALLERY_SCORE, "images": gallery(annotation, results)}}
