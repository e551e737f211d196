"""COCOeval bbox fed shard by shard: the per-image matching runs as each shard lands, `finish` only accumulates.

`add` runs faster-coco-eval's C++ per-image evaluation (`COCOevalEvaluateImages`, through
`COCOeval_faster` with `separate_eval`; its results read back with `ImageEvaluation.__getstate__`)
on the shard's (image, class) pairs that have ground truth, and keeps per detection its score,
image, rank in its (image, class) and true-positive / counted flags per area range and IoU
threshold. A detection of a class its image has no ground truth of matches nothing: COCOeval
counts it as a false positive inside the area range and ignores it outside, which `add` writes
down without the C++ (about 80% of the detector-like answers).

`finish` is pycocotools' `accumulate` on those arrays, vectorised: detections in pycocotools' order
(score descending, ties in image-id order, then in the image's own order: its mergesort of the
image-ordered concatenation), the same integer counts and float operations, so the precision and
recall arrays equal pycocotools' bit for bit and need none of the C++ first-point fix. A curve is
sampled where recall first reaches a threshold, which is a true positive (or the first row), and
the running maximum of precision from there on is reached at a true positive, so `finish` computes
the curve at the true positives only, with the count of the other counted rows before each.
Rows are kept in arrays that grow in place as shards come, so nothing is joined after the last shard.
It does not call faster-coco-eval's `COCOevalAccumulate`: that one takes one list of classes x area
ranges x images `ImageEvaluation` objects (1.6M on val2017) and needed 3.5-4.6 s for 409k detections
on this machine (bench/eval_stream.py --cpp-accumulate). Images that never come count as images
without detections, as in one go on the union of the results.
"""
from __future__ import annotations

import operator
import time
from dataclasses import dataclass
from itertools import chain

import numpy as np

from evaluation.coco_eval import STAT_NAMES, summarize, valid_ground_truth

_STATE = operator.methodcaller("__getstate__")  # an ImageEvaluation's vectors as Python lists


@dataclass
class Ranked:
    """Detections after COCOeval's per-image step (at most maxDets[-1] per image and class), one row each."""

    score: np.ndarray  # float64 [n]
    image_rank: np.ndarray  # int64 [n]: the image's place among the sorted image ids
    rank_in_image: np.ndarray  # int64 [n]: place among the image's detections of its class, by score
    category: np.ndarray  # int64 [n]: index into the sorted category ids
    flags: np.ndarray  # bool: [n, 2, A*T] true positive and counted (not ignored), or [n, A] inside the area range


class _Columns:
    """Per-detection arrays appended shard by shard in place (capacity doubled when full): `curves` reads every
    shard's rows as they lie. Joining per-shard parts after the last shard copied every row again (80 ms for
    831k detections here)."""

    def __init__(self, **columns: tuple):
        self.n = 0
        self._arrays = {name: np.empty((0, *shape), dtype) for name, (dtype, shape) in columns.items()}

    def append(self, **values: np.ndarray) -> np.ndarray:
        """Add these rows; returns their row numbers."""
        m = len(next(iter(values.values())))
        capacity = len(next(iter(self._arrays.values())))
        if self.n + m > capacity:
            capacity = max(2 * capacity, self.n + m, 1024)
            for name, old in self._arrays.items():
                new = np.empty((capacity, *old.shape[1:]), old.dtype)
                new[:self.n] = old[:self.n]
                self._arrays[name] = new
        for name, column in values.items():
            self._arrays[name][self.n:self.n + m] = column
        self.n += m
        return np.arange(self.n - m, self.n)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name][:self.n]


class StreamingCocoEval:
    """COCOeval bbox on every image of an annotation file, its detections given a shard at a time."""

    def __init__(self, annotation: str | dict):
        from faster_coco_eval import COCO, COCOeval_faster

        self._quiet = lambda *args, **kwargs: None
        self._make_eval, self._make_coco = COCOeval_faster, COCO
        self.gt = COCO(annotation)  # a path, or the parsed file
        self.gt.print_function = self._quiet
        self.params = COCOeval_faster(self.gt, None, "bbox", print_function=self._quiet).params
        self.image_ids = sorted(self.gt.getImgIds())
        self.cat_ids = sorted(self.gt.getCatIds())
        self._rank = {image_id: r for r, image_id in enumerate(self.image_ids)}
        self._cat_index = {c: k for k, c in enumerate(self.cat_ids)}
        self.npig = valid_ground_truth(self.gt, self.params)  # [K, A], over every image of the file
        self._gt_pairs = {(int(a["image_id"]), a["category_id"]) for a in self.gt.dataset["annotations"]}
        self.added: set[int] = set()
        self.refused: list[int] = []  # ids given twice, or not in the annotation file: not evaluated again
        self.detections = 0
        self.add_seconds = 0.0
        A, T = len(self.params.areaRng), len(self.params.iouThrs)
        # every kept detection: score, its order among ties (image rank x maxDets[-1] + rank in its image and
        # class), class index, and where its flags lie: row r >= 0 of `_matched`, or row -1 - r of `_unmatched`
        self._rows = _Columns(score=(np.float64, ()), tie=(np.int64, ()), category=(np.int16, ()),
                              flags_at=(np.int64, ()))
        self._matched = _Columns(flags=(bool, (2, A * T)))  # (image, class) pairs with ground truth: tp, counted
        self._unmatched = _Columns(inside=(bool, (A,)))  # the others: inside each area range

    def add(self, image_ids: list[int], results: list[dict]) -> list[int]:
        """Match these images' detections (COCO results) to the ground truth; returns the image ids taken.

        An id already added or not in the annotation file is refused, and its detections are dropped:
        a re-issued shard is never counted twice. Detections of images not in `image_ids` are dropped.
        """
        t0 = time.perf_counter()
        taken = sorted({int(i) for i in image_ids if int(i) in self._rank and int(i) not in self.added})
        self.refused.extend(int(i) for i in image_ids if int(i) not in taken)
        self.added.update(taken)
        fresh = set(taken)
        kept = [r for r in results if int(r["image_id"]) in fresh]
        self.detections += len(kept)
        known = [r for r in kept if r["category_id"] in self._cat_index]  # COCOeval skips other classes too
        with_gt = [r for r in known if (int(r["image_id"]), r["category_id"]) in self._gt_pairs]
        if with_gt:
            part = self._match(taken, with_gt)
            self._keep(part, self._matched.append(flags=part.flags))
        if len(with_gt) < len(known):
            part = self._rank_unmatched([r for r in known if (int(r["image_id"]), r["category_id"])
                                         not in self._gt_pairs])
            self._keep(part, -1 - self._unmatched.append(inside=part.flags))
        self.add_seconds += time.perf_counter() - t0
        return taken

    def _keep(self, part: Ranked, flags_at: np.ndarray) -> None:
        tie = part.image_rank * self.params.maxDets[-1] + part.rank_in_image
        self._rows.append(score=part.score, tie=tie, category=part.category, flags_at=flags_at)

    def _match(self, image_ids: list[int], results: list[dict]) -> Ranked:
        """The C++ per-image evaluation of these (sorted) images, reduced to flat arrays per detection."""
        gt, dt = self._shard_cocos(image_ids, results)
        ev = self._make_eval(gt, dt, "bbox", print_function=self._quiet, separate_eval=True)
        ev.params.imgIds = image_ids
        ev.evaluate()
        evaluations = ev._evalImgs_cpp  # [K][A][I] flattened: index (k * A + a) * I + i
        A, T, I = len(self.params.areaRng), len(self.params.iouThrs), len(image_ids)
        column = {image_id: i for i, image_id in enumerate(image_ids)}
        pairs = np.array(sorted({(self._cat_index[r["category_id"]], column[int(r["image_id"])]) for r in results}))
        where = ((pairs[:, :1] * A + np.arange(A)[None, :]) * I + pairs[:, 1:]).ravel().tolist()
        states = list(map(_STATE, map(evaluations.__getitem__, where)))  # [pair][area]
        n_dets = np.array([len(s[2]) for s in states[::A]], dtype=np.int64)
        n = int(n_dets.sum())
        start = np.repeat(np.cumsum(n_dets) - n_dets, n_dets)  # each detection's first index in its pair
        per_det = np.repeat(n_dets, n_dets)
        rank_in_image = np.arange(n) - start
        score = np.fromiter(chain.from_iterable(s[2] for s in states[::A]), np.float64, n)
        matched = np.fromiter(chain.from_iterable(s[0] for s in states), np.int64, A * T * n) != 0
        ignored = np.fromiter(chain.from_iterable(s[4] for s in states), bool, A * T * n)
        # the flags of a pair are [A][T][D] after those of the pairs before it
        flat = A * T * start[:, None] + np.arange(A * T)[None, :] * per_det[:, None] + rank_in_image[:, None]
        matched, counted = matched[flat], ~ignored[flat]
        ranks = np.array([self._rank[i] for i in image_ids], dtype=np.int64)[pairs[:, 1]]
        return Ranked(score, np.repeat(ranks, n_dets), rank_in_image, np.repeat(pairs[:, 0], n_dets),
                      np.stack([matched & counted, counted], axis=1))

    def _shard_cocos(self, image_ids: list[int], results: list[dict]):
        """The ground truth of these images and their detections as two COCO objects holding these images only.

        The detections get what `COCO.loadRes` gives bbox results (area w x h, ids from 1, a box polygon, iscrowd
        0). loadRes, and COCOeval's constructor on the whole ground truth, copy, index or sort every image of the
        annotation file at each call: once per shard, that grows with the square of the set (704 shards of
        10240 images at 64 devices). The per-image matching sees the same annotations either way.
        """
        anns = []
        for index, r in enumerate(results):
            bb = r["bbox"]
            x1, x2, y1, y2 = bb[0], bb[0] + bb[2], bb[1], bb[1] + bb[3]
            anns.append({**r, "segmentation": [[x1, y1, x1, y2, x2, y2, x2, y1]], "area": bb[2] * bb[3],
                         "id": index + 1, "iscrowd": 0})
        images = [self.gt.imgs[i] for i in image_ids]
        truth = [a for i in image_ids for a in self.gt.imgToAnns.get(i, ())]
        return self._coco(images, truth), self._coco(images, anns)

    def _coco(self, images: list[dict], annotations: list[dict]):
        """A COCO object over these images and annotations, with the file's categories, indexed."""
        coco = self._make_coco(print_function=self._quiet)
        coco.dataset = {"images": images, "categories": self.gt.dataset["categories"], "annotations": annotations}
        coco.createIndex()
        return coco

    def _rank_unmatched(self, results: list[dict]) -> Ranked:
        """Detections of a class the image has no ground truth of: all false positives, or ignored outside
        the area range (what COCOeval's per-image step gives them), ranked by score in their image and class."""
        p = self.params
        n = len(results)
        score = np.fromiter((r["score"] for r in results), np.float64, n)
        area = np.fromiter((r["bbox"][2] * r["bbox"][3] for r in results), np.float64, n)  # loadRes' area
        rank = np.fromiter((self._rank[int(r["image_id"])] for r in results), np.int64, n)
        cat = np.fromiter((self._cat_index[r["category_id"]] for r in results), np.int64, n)
        order = np.lexsort((np.arange(n), -score, rank, cat))  # stable: ties keep the results' order
        score, area, rank, cat = score[order], area[order], rank[order], cat[order]
        first = np.r_[True, (rank[1:] != rank[:-1]) | (cat[1:] != cat[:-1])]
        starts = np.flatnonzero(first)
        rank_in_image = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        keep = rank_in_image < p.maxDets[-1]  # what COCOeval's per-image step keeps
        lo = np.array([r[0] for r in p.areaRng])[None, :]
        hi = np.array([r[1] for r in p.areaRng])[None, :]
        inside = ~((area[keep][:, None] < lo) | (area[keep][:, None] > hi))  # [n, A]
        return Ranked(score[keep], rank[keep], rank_in_image[keep], cat[keep], inside)

    def finish(self) -> dict:
        """{"stats", "per_class", ...} as `evaluation.coco_eval.evaluate` gives them on the union of what was added."""
        t0 = time.perf_counter()
        precision, recall = self.curves(every_max_dets=False)
        stats = summarize(precision, recall)
        per_class = {}
        for k, cat_id in enumerate(self.cat_ids):
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            per_class[self.gt.cats[cat_id]["name"]] = float(np.mean(p)) if p.size else None
        return {
            "evaluator": "streaming",
            "stats": {name: float(v) for name, v in zip(STAT_NAMES, stats)},
            "per_class": per_class,
            "images": len(self.image_ids),
            "detections": self.detections,
            "seconds": time.perf_counter() - t0,
            "add_seconds": self.add_seconds,
            "refused": sorted(set(self.refused)),
        }

    def curves(self, every_max_dets: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """pycocotools' precision [T, R, K, A, M] and recall [T, K, A, M] arrays.

        With `every_max_dets` False, the precision of the smaller maxDets (which neither the 12 numbers nor the
        per-class AP read) is left at -1 where it differs from the largest one's; their recall is computed.
        """
        p = self.params
        rec_thrs, max_dets = np.asarray(p.recThrs), list(p.maxDets)
        T, R, K, A, M = len(p.iouThrs), len(rec_thrs), len(self.cat_ids), len(p.areaRng), len(max_dets)
        precision = -np.ones((T, R, K, A, M))
        recall = -np.ones((T, K, A, M))
        score, tie, flags_at, category = (self._rows[c] for c in ("score", "tie", "flags_at", "category"))
        by_class = np.argsort(category, kind="stable")
        bounds = np.searchsorted(category[by_class], np.arange(K + 1))
        for k in np.flatnonzero((self.npig > 0).any(axis=1)):
            rows = _pycocotools_order(by_class[bounds[k]:bounds[k + 1]], score, tie)
            at = flags_at[rows]
            matched = at >= 0
            flags = self._matched["flags"][at[matched]]  # [rows that can match, 2, A*T]
            inside = np.zeros((len(rows), A), bool)  # the others: counted in each area range
            inside[~matched] = self._unmatched["inside"][-1 - at[~matched]]
            rank_in_image = tie[rows] % max_dets[-1]
            npig = np.repeat(self.npig[k], T)
            for mi in range(M - 1, -1, -1):  # maxDets[-1] first: every detection kept
                kept = rank_in_image < max_dets[mi]
                if mi < M - 1 and kept.all():  # the same detections as for maxDets[-1]
                    precision[:, :, k, :, mi], recall[:, k, :, mi] = precision[:, :, k, :, -1], recall[:, k, :, -1]
                    continue
                tp, counted = flags[kept[matched]].transpose(1, 0, 2)
                if mi == M - 1 or every_max_dets:
                    others_before = np.cumsum(inside & kept[:, None], axis=0)[matched & kept]
                    pr, rc = _curves(tp, counted, others_before, npig, rec_thrs)
                    precision[:, :, k, :, mi] = pr.reshape(A, T, R).transpose(1, 2, 0)
                else:
                    rc = np.where(npig > 0, tp.sum(axis=0).astype(float) / np.maximum(npig, 1), -1.0)
                recall[:, k, :, mi] = rc.reshape(A, T).T
        return precision, recall


def _pycocotools_order(rows: np.ndarray, score: np.ndarray, tie: np.ndarray) -> np.ndarray:
    """These rows (one class) in pycocotools' order: score descending, equal scores by `tie` (image order, then
    the image's own order), which pycocotools gets from a stable sort of the image-ordered rows. Sorted here by
    score alone (numpy's quicksort: AVX-512 where the CPU has it, 5x the stable sort on this machine), then the
    runs of equal scores (NaN among them) by `tie`: the same order without a stable sort of every row by `tie`."""
    s = score[rows]
    order = np.argsort(-s)
    ordered = s[order]
    same = (ordered[1:] == ordered[:-1]) | (np.isnan(ordered[1:]) & np.isnan(ordered[:-1]))
    if same.any():
        in_run = np.zeros(len(order), bool)
        in_run[1:] |= same
        in_run[:-1] |= same
        at = np.flatnonzero(in_run)  # runs of equal scores, in score order: sorted within themselves by tie
        sub = order[at]
        order[at] = sub[np.lexsort((tie[rows[sub]], -s[sub]))]
    return rows[order]


def _curves(tp: np.ndarray, counted: np.ndarray, others_before: np.ndarray, npig: np.ndarray,
            rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision [C, R] and recall [C] of one class's C = A*T curves: pycocotools' arithmetic, -1 without ground truth.

    `tp` and `counted` [Mk, C]: the flags of the class's detections that can match, in order; `others_before`
    [Mk, A]: how many of its other detections up to each of them count in each area range.

    Only the true positives of each curve are visited. Recall changes only there, so a recall threshold is
    first reached at the j-th true positive, the least j with j / npig >= threshold (row 0 for j = 0), and the
    running maximum of precision from any row on is reached at a true positive: precision falls between two.
    The j-th true positive's precision is j / (counted up to its row + spacing(1)), pycocotools' own operands.
    """
    C, A = len(npig), others_before.shape[1]
    precision, recall = -np.ones((C, len(rec_thrs))), -np.ones(C)
    live = np.flatnonzero(npig > 0)
    if not len(live):
        return precision, recall
    curve, row = np.divmod(np.flatnonzero(tp.T[live].ravel()), len(tp))  # true positives, curve by curve, in order
    n_tp = np.bincount(curve, minlength=len(live))
    j = np.arange(len(curve)) - (np.cumsum(n_tp) - n_tp)[curve] + 1  # the j-th true positive of its curve
    column = live[curve]
    counted_sum = np.cumsum(counted, axis=0)[row, column] + others_before[row, column // (C // A)]
    n = npig[live]
    best = np.zeros((len(live), int(n.max()) + 1))  # [curve, j - 1]: the j-th true positive's precision, 0 after
    best[curve, j - 1] = j.astype(float) / (counted_sum.astype(float) + np.spacing(1))
    best = np.maximum.accumulate(best[:, ::-1], axis=1)[:, ::-1]  # the best from each true positive on
    needed = np.empty((len(live), len(rec_thrs)), np.int64)  # the least j reaching each recall threshold
    for value in np.unique(n):
        needed[n == value] = np.searchsorted(np.arange(value + 1) / value, rec_thrs, side="left")
    precision[live] = np.take_along_axis(best, np.maximum(needed - 1, 0), axis=1)
    recall[live] = n_tp / n
    return precision, recall
