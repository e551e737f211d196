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
the curve on the rows that can match only, with the count of the other counted rows before each.
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
_KEYS = ("score", "image_rank", "rank_in_image", "category")


@dataclass
class Ranked:
    """Detections after COCOeval's per-image step (at most maxDets[-1] per image and class), one row each."""

    score: np.ndarray  # float64 [n]
    image_rank: np.ndarray  # int64 [n]: the image's place among the sorted image ids
    rank_in_image: np.ndarray  # int64 [n]: place among the image's detections of its class, by score
    category: np.ndarray  # int64 [n]: index into the sorted category ids
    flags: np.ndarray  # bool: [n, 2, A*T] true positive and counted (not ignored), or [n, A] inside the area range


def _join(parts: list[Ranked], flag_shape: tuple) -> Ranked:
    if not parts:
        empty = np.zeros(0, np.int64)
        return Ranked(np.zeros(0), empty, empty, empty, np.zeros((0, *flag_shape), bool))
    return Ranked(*(np.concatenate([getattr(p, f) for p in parts]) for f in (*_KEYS, "flags")))


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
        self._matched: list[Ranked] = []  # (image, class) pairs with ground truth: flags [n, 2, A*T]
        self._unmatched: list[Ranked] = []  # the others: flags [n, A]

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
            self._matched.append(self._match(taken, with_gt))
        if len(with_gt) < len(known):
            self._unmatched.append(self._rank_unmatched([r for r in known if (int(r["image_id"]), r["category_id"])
                                                         not in self._gt_pairs]))
        self.add_seconds += time.perf_counter() - t0
        return taken

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
        m, u = _join(self._matched, (2, A * T)), _join(self._unmatched, (A,))
        score, image_rank, rank_in_image, category = (np.concatenate([getattr(m, f), getattr(u, f)]) for f in _KEYS)
        # pycocotools' order in a class: score descending, ties in image order, then in the image's own order
        by_tie = np.argsort(image_rank * max_dets[-1] + rank_in_image, kind="stable")
        grouped = by_tie[np.argsort(category[by_tie].astype(np.min_scalar_type(K)), kind="stable")]
        bounds = np.searchsorted(category[grouped], np.arange(K + 1))
        for k in np.flatnonzero((self.npig > 0).any(axis=1)):
            rows = grouped[bounds[k]:bounds[k + 1]]
            rows = rows[np.argsort(-score[rows], kind="stable")]
            matched = rows < len(m.score)
            flags = m.flags[rows[matched]]  # [rows that can match, 2, A*T]
            inside = np.zeros((len(rows), A), bool)  # the others: counted in each area range
            inside[~matched] = u.flags[rows[~matched] - len(m.score)]
            npig = np.repeat(self.npig[k], T)
            for mi in range(M - 1, -1, -1):  # maxDets[-1] first: every detection kept
                kept = rank_in_image[rows] < max_dets[mi]
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


def _curves(tp: np.ndarray, counted: np.ndarray, others_before: np.ndarray, npig: np.ndarray,
            rec_thrs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision [C, R] and recall [C] of one class's C = A*T curves: pycocotools' arithmetic, -1 without ground truth.

    `tp` and `counted` [Mk, C]: the flags of the class's detections that can match, in order; `others_before`
    [Mk, A]: how many of its other detections up to each of them count in each area range.
    """
    C, A = len(npig), others_before.shape[1]
    precision, recall = -np.ones((C, len(rec_thrs))), -np.ones(C)
    live = np.flatnonzero(npig > 0)
    tp_sum = np.cumsum(tp[:, live], axis=0).astype(dtype=float)
    counted_sum = np.cumsum(counted[:, live], axis=0) + np.repeat(others_before, C // A, axis=1)[:, live]
    rc = tp_sum / npig[live]
    pr = tp_sum / (counted_sum.astype(float) + np.spacing(1))  # fp + tp + spacing(1): fp + tp is exact in float64
    recall[live] = rc[-1] if len(rc) else 0.0
    pr = np.maximum.accumulate(pr[::-1], axis=0)[::-1]  # precision made non-increasing
    inds = np.array([np.searchsorted(col, rec_thrs, side="left") for col in rc.T]).reshape(len(live), -1)
    if len(rc):
        precision[live] = np.where(inds < len(rc), pr[np.minimum(inds, len(rc) - 1), np.arange(len(live))[:, None]], 0)
    else:
        precision[live] = 0.0
    return precision, recall
