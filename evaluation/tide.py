"""Where AP is lost, by error type: TIDE's breakdown (Bolya et al., ECCV 2020) of COCO box results.

Written here rather than taken from `tidecv`: its last release predates numpy 2 and pulls in
opencv and seaborn for plots we draw ourselves. The definitions are TIDE's, at its defaults
(foreground IoU 0.5, background IoU 0.1, 100 detections an image, crowd boxes as ignore regions):
each false positive of an image, taken in descending score, is the first that applies of

- Loc: IoU in [0.1, 0.5] with a ground-truth box of its class;
- Cls: IoU >= 0.5 with a ground-truth box of another class;
- Dupl: IoU >= 0.5 with a box of its class already matched by a higher-scoring detection;
- Bkg: IoU <= 0.1 with every ground-truth box;
- Both: anything else (a wrong class and a poor box);

and a ground-truth box that no detection matched and no Loc or Cls error points at is Miss.
dAP of a type is AP50 with that type's errors fixed minus AP50 as it is: a Loc or Cls error becomes
a true positive (the highest-scoring one per ground-truth box, the others are suppressed), Dupl,
Bkg and Both errors are suppressed, a Miss leaves the ground truth. AP here is TIDE's: 101-point
interpolated, in AP points (x100), averaged over the classes with a ground-truth box as COCOeval does
(TIDE also averages in classes with detections only, at AP 0: on a subset of COCO's classes that
puts its AP50 far below COCOeval's).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

FOREGROUND_IOU = 0.5
BACKGROUND_IOU = 0.1
MAX_DETS = 100
ERROR_TYPES = ("Cls", "Loc", "Both", "Dupl", "Bkg", "Miss")


@dataclass
class Outcome:
    """Each detection's verdict and each error's AP data point, original and fixed."""

    points: list = field(default_factory=list)  # (class, score, true) of true positives
    errors: list = field(default_factory=list)  # (type, class, score, fix) fix: None, "tp" or (class, gt key)
    gt_count: dict = field(default_factory=lambda: defaultdict(int))
    gt_classes: set = field(default_factory=set)  # classes with a (non-crowd) ground-truth box
    per_image: dict = field(default_factory=dict)  # image id -> {"tp": [...], type: [...]} (result indices, gt)
    misses: list = field(default_factory=list)  # (class, image id, gt index)
    best: dict = field(default_factory=dict)  # (image id, gt index) -> the error that a Loc/Cls fix turns true


def _xywh_iou(dets: list, gts: list, crowd: list) -> np.ndarray:
    from pycocotools import mask as mask_utils
    if not dets or not gts:
        return np.zeros((len(dets), len(gts)))
    return np.asarray(mask_utils.iou(dets, gts, crowd), dtype=np.float64).reshape(len(dets), len(gts))


def _image(outcome: Outcome, image_id: int, dets: list[tuple[int, dict]], anns: list[dict],
           best: dict) -> None:
    gts = [a for a in anns if not a.get("iscrowd", 0)]
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    for g in gts:
        outcome.gt_count[g["category_id"]] += 1
        outcome.gt_classes.add(g["category_id"])
    dets = sorted(dets, key=lambda d: -d[1]["score"])[:MAX_DETS]
    verdicts: dict[str, list] = defaultdict(list)
    outcome.per_image[image_id] = verdicts
    if not dets:
        for k, g in enumerate(gts):
            outcome.misses.append((g["category_id"], image_id, k))
            verdicts["Miss"].append(k)
        return
    iou = _xywh_iou([d["bbox"] for _, d in dets], [g["bbox"] for g in gts], [0] * len(gts))
    det_cls = np.array([d["category_id"] for _, d in dets])
    gt_cls = np.array([g["category_id"] for g in gts])
    same = det_cls[:, None] == gt_cls[None, :]
    cls_iou = iou * same
    buffer = cls_iou.copy()
    matched = np.full(len(dets), -1)
    gt_used = np.zeros(len(gts), dtype=bool)
    for i in range(len(dets)):
        if not len(gts):
            break
        j = int(np.argmax(buffer[i]))
        if buffer[i, j] >= FOREGROUND_IOU:
            matched[i], gt_used[j] = j, True
            buffer[:, j] = 0
    ignored = np.zeros(len(dets), dtype=bool)
    if crowd:
        crowd_iou = _xywh_iou([d["bbox"] for _, d in dets], [c["bbox"] for c in crowd], [1] * len(crowd))
        crowd_cls = np.array([c["category_id"] for c in crowd])
        ignored = (matched < 0) & ((crowd_iou > FOREGROUND_IOU) & (det_cls[:, None] == crowd_cls[None, :])).any(1)
    usable = np.zeros(len(gts), dtype=bool)
    for i, (index, d) in enumerate(dets):
        cls, score = d["category_id"], d["score"]
        if ignored[i]:
            continue
        if matched[i] >= 0:
            outcome.points.append((cls, score, True))
            verdicts["tp"].append(index)
            continue
        kind, fix = _classify(i, iou, cls_iou, same, gt_used, len(gts))
        if kind in ("Loc", "Cls"):
            j = fix
            fix = None
            if not gt_used[j]:  # the highest-scoring error on an unmatched box is the one fixed
                usable[j] = True
                key = (image_id, j)
                if key not in best or best[key][0] < score:
                    best[key] = (score, len(outcome.errors))
                fix = (int(gt_cls[j]) if kind == "Cls" else cls, key)
        outcome.errors.append((kind, cls, score, fix))
        verdicts[kind].append(index)
    for j in np.flatnonzero(~gt_used & ~usable):
        outcome.misses.append((int(gt_cls[j]), image_id, int(j)))
        verdicts["Miss"].append(int(j))


def _classify(i: int, iou: np.ndarray, cls_iou: np.ndarray, same: np.ndarray, gt_used: np.ndarray,
              n_gt: int) -> tuple[str, int | None]:
    """TIDE's error type of an unmatched detection, and the ground-truth box a Loc or Cls fix would take."""
    if n_gt == 0:
        return "Bkg", None
    j = int(np.argmax(cls_iou[i]))
    if BACKGROUND_IOU <= cls_iou[i, j] <= FOREGROUND_IOU:
        return "Loc", j
    other = iou[i] * ~same[i]
    j = int(np.argmax(other))
    if other[j] >= FOREGROUND_IOU:
        return "Cls", j
    if (cls_iou[i] * gt_used).max() >= FOREGROUND_IOU:
        return "Dupl", None
    if iou[i].max() <= BACKGROUND_IOU:
        return "Bkg", None
    return "Both", None


def classify(annotation: dict, results: list[dict]) -> Outcome:
    """Every detection and ground-truth box of the annotation's images, with TIDE's verdict."""
    anns: dict[int, list] = defaultdict(list)
    for a in annotation["annotations"]:
        anns[int(a["image_id"])].append(a)
    dets: dict[int, list] = defaultdict(list)
    for index, r in enumerate(results):
        dets[int(r["image_id"])].append((index, r))
    outcome, best = Outcome(), {}
    for im in annotation["images"]:
        image_id = int(im["id"])
        _image(outcome, image_id, dets.get(image_id, []), anns.get(image_id, []), best)
    outcome.best = {key: index for key, (_, index) in best.items()}
    return outcome


def _class_ap(scores: np.ndarray, true: np.ndarray, n_gt: int) -> float:
    """TIDE's 101-point interpolated AP of one class, in AP points."""
    if n_gt <= 0 or not len(scores):
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(true[order])
    precision = tp / np.arange(1, len(order) + 1)
    recall = tp / n_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, np.linspace(0, 1, 101), side="left")
    sampled = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(sampled.mean() * 100)


def mean_ap(points: list, gt_count: dict, classes: set) -> float:
    """The mean AP over `classes` (those with ground truth); one left with neither ground truth nor data point
    (a Miss fix took its every box) is left out, as TIDE leaves it out."""
    by_class: dict[int, list] = defaultdict(list)
    for cls, score, true in points:
        by_class[cls].append((score, true))
    aps = []
    for cls in sorted(classes):
        rows = by_class.get(cls, [])
        if not rows and gt_count.get(cls, 0) == 0:
            continue
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
        aps.append(_class_ap(arr[:, 0], arr[:, 1] > 0, gt_count.get(cls, 0)))
    return float(np.mean(aps)) if aps else 0.0


def _fixed(outcome: Outcome, kind: str) -> float:
    points = list(outcome.points)
    gt_count = dict(outcome.gt_count)
    for index, (error, cls, score, fix) in enumerate(outcome.errors):
        if error != kind:
            points.append((cls, score, False))
        elif fix is not None and outcome.best.get(fix[1]) == index:
            points.append((fix[0], score, True))
    if kind == "Miss":
        for cls, _, _ in outcome.misses:
            gt_count[cls] -= 1
    return mean_ap(points, gt_count, outcome.gt_classes)


def breakdown(annotation: dict, results: list[dict]) -> dict:
    """{"ap50": TIDE's AP50, "dAP": type -> AP points gained by fixing it, "counts": type -> errors}."""
    outcome = classify(annotation, results)
    base_points = outcome.points + [(cls, score, False) for _, cls, score, _ in outcome.errors]
    ap = mean_ap(base_points, outcome.gt_count, outcome.gt_classes)
    counts = {kind: 0 for kind in ERROR_TYPES}
    for kind, *_ in outcome.errors:
        counts[kind] += 1
    counts["Miss"] = len(outcome.misses)
    # a fix can only lower AP through binning: TIDE reports 0 then
    dap = {kind: max(_fixed(outcome, kind) - ap, 0.0) for kind in ERROR_TYPES}
    return {"ap50": ap, "dAP": dap, "counts": counts}
