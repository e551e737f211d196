"""Box AP with COCOeval, once, on the union of a job's results.

Two evaluators give the same 12 numbers, bit for bit: `pycocotools` (the reference) and
`faster-coco-eval` (default, about 7x faster: its C++ does the per-image matching and the
accumulation). The one place where they differ is the precision of a point on the
precision/recall curve: pycocotools divides by `tp + fp + np.spacing(1)`, the C++ by
`tp + fp`. Only where `tp + fp == 1` does that change a float64 (1.0 against
1 - 2**-52), and the interpolated precision keeps that value only for a (IoU, class, area,
maxDets) curve whose first counted detection is a true positive and whose second is not
(or is absent). The C++ accumulation also samples each curve at recall 2/npig (extra recall
thresholds), which tells those curves apart; their 1.0 entries become 1 - 2**-52, and the
12 numbers then come from pycocotools' own `summarize` on the same arrays.
"""
from __future__ import annotations

import contextlib
import io
import time

import numpy as np

STAT_NAMES = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)
EVALUATORS = ("faster-coco-eval", "pycocotools")
DEFAULT_EVALUATOR = "faster-coco-eval"
_FIRST_POINT = 1.0 / (1.0 + np.spacing(1))  # pycocotools' precision after one true positive


def check_evaluator(evaluator: str) -> str:
    """The evaluator name, or ValueError naming the flag."""
    if evaluator not in EVALUATORS:
        raise ValueError(f"unknown COCO evaluator {evaluator!r}: choose from {', '.join(EVALUATORS)} (--coco-eval)")
    return evaluator


def evaluate(annotation: str | dict, results: list[dict], evaluator: str = DEFAULT_EVALUATOR) -> dict:
    """COCOeval bbox on every image of the annotation file (its path, or its parsed content):
    {"stats", "per_class", "evaluator", ...}.

    `stats` maps the 12 COCOeval names to floats (-1 where COCO has no ground truth for the range);
    `per_class` maps category name to AP (None where the class has no ground truth).
    """
    check_evaluator(evaluator)
    t0 = time.time()
    if evaluator == "pycocotools":
        gt, precision, recall = _pycocotools(annotation, results)
    else:
        gt, precision, recall = _faster(annotation, results)
    stats = summarize(precision, recall)
    per_class = {}
    for k, cat_id in enumerate(sorted(gt.getCatIds())):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[gt.cats[cat_id]["name"]] = float(np.mean(p)) if p.size else None
    return {
        "evaluator": evaluator,
        "stats": {name: float(v) for name, v in zip(STAT_NAMES, stats)},
        "per_class": per_class,
        "images": len(gt.getImgIds()),
        "detections": len(results),
        "seconds": time.time() - t0,
    }


def summarize(precision: np.ndarray, recall: np.ndarray) -> list[float]:
    """The 12 numbers, computed by pycocotools' own `summarize` on these arrays."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(iouType="bbox")
    ev.eval = {"precision": precision, "recall": recall}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return list(ev.stats)


def _pycocotools(annotation: str | dict, results: list[dict]):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(annotation, dict):  # what COCO(path) does after json.load
            gt = COCO()
            gt.dataset = annotation
            gt.createIndex()
        else:
            gt = COCO(annotation)
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
    return gt, ev.eval["precision"], ev.eval["recall"]


def _faster(annotation: str | dict, results: list[dict]):
    gt, _, precision, recall = faster_curves(annotation, results)
    return gt, precision, recall


def faster_curves(annotation: str | dict, results: list[dict]):
    """faster-coco-eval's (gt, C++ precision, precision as pycocotools has it, recall)."""
    from faster_coco_eval import COCO, COCOeval_faster

    quiet = lambda *args, **kwargs: None  # noqa: E731
    gt = COCO(annotation)  # a path, or the parsed file (a shallow copy of it)
    gt.print_function = quiet
    dt = gt.loadRes([dict(r) for r in results])
    ev = COCOeval_faster(gt, dt, "bbox", print_function=quiet)
    npig = valid_ground_truth(gt, ev.params)
    second = np.where(npig > 0, 2.0 / np.maximum(npig, 1), np.inf)  # recall after two true positives
    probes = np.unique(second[np.isfinite(second)])
    n_thresholds = len(ev.params.recThrs)
    # each recall threshold is sampled on its own: extra ones leave the usual 101 untouched
    ev.params.recThrs = np.concatenate([ev.params.recThrs, probes])
    ev.evaluate()  # matching and accumulation in one C++ call
    curves = np.asarray(ev.eval["precision"], dtype=np.float64)
    raw = curves[:, :n_thresholds]
    fixed = first_point_as_pycocotools(raw, curves[:, n_thresholds:], probes, second)
    return gt, raw, fixed, np.asarray(ev.eval["recall"])


def valid_ground_truth(gt, params) -> np.ndarray:
    """npig [K, A]: ground-truth boxes that count (not crowd, area inside the range) per class and area range."""
    cats = {c: k for k, c in enumerate(sorted(params.catIds))}
    images = set(params.imgIds)
    lo = np.array([r[0] for r in params.areaRng], dtype=np.float64)
    hi = np.array([r[1] for r in params.areaRng], dtype=np.float64)
    counts = np.zeros((len(cats), len(params.areaRng)), dtype=np.int64)
    for g in gt.dataset["annotations"]:
        k = cats.get(g["category_id"])
        if k is None or g["image_id"] not in images or g.get("iscrowd", 0):
            continue
        counts[k] += (g["area"] >= lo) & (g["area"] <= hi)
    return counts


def first_point_as_pycocotools(precision: np.ndarray, sampled: np.ndarray, probes: np.ndarray,
                               second: np.ndarray) -> np.ndarray:
    """The C++ precision [T, R, K, A, M] made equal to pycocotools' (see the module docstring).

    `sampled` [T, len(probes), K, A, M] is the same curves sampled at `probes`; `second` [K, A]
    is each curve's recall after two true positives (2/npig).
    """
    precision = precision.copy()
    if not len(probes):
        return precision
    K, A = second.shape
    where = np.minimum(np.searchsorted(probes, second), len(probes) - 1)
    # 1.0 at recall 2/npig: the curve starts with two true positives, so its leading 1.0 is exact
    two_first = sampled[:, where, np.arange(K)[:, None], np.arange(A)[None, :], :] == 1.0  # [T, K, A, M]
    precision[(precision == 1.0) & ~two_first[:, None]] = _FIRST_POINT
    return precision
