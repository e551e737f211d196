"""Answers shaped like a real detector's, made from an image's ground truth, for sim devices and benchmarks.

Per image: each true box found once (jittered, now and then with a wrong class) or missed,
some found again as lower-scored duplicates, the rest false positives up to a Poisson(83)
total (at most 100), and now and then nothing at all. Scores spread as a detector's do:
found boxes mostly high, duplicates middling, false positives mostly near the 0.05 floor.
Seeded by image id, an image's answer is the same in any batch, shard, device or order.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model.config import COCO_CATEGORY_IDS
from workers.backends.base import MAX_DETS
from workers.backends.groundtruth import AnnotationAnswers

DETECTIONS_PER_IMAGE = 83  # 414k detections for 5000 images, as measured on the real model's results
NOTHING_FOUND_FRACTION = 0.02
MISSED_FRACTION = 0.15
WRONG_CLASS_FRACTION = 0.1
ANSWER_SEED = 17  # mixed with the image id
SCORE_FLOOR = 0.05  # the model's score threshold
CATEGORY_IDS = np.asarray(COCO_CATEGORY_IDS, dtype=np.int64)
_LABEL_OF = np.zeros(CATEGORY_IDS.max() + 1, dtype=np.int64)
_LABEL_OF[CATEGORY_IDS] = np.arange(len(CATEGORY_IDS))


def random_boxes(rng: np.random.Generator, k: int, w: int, h: int) -> np.ndarray:
    """k boxes [x, y, w, h] of log-uniform size (small, medium and large all occur), inside the image, unrounded."""
    side = np.exp(rng.uniform(np.log(4), np.log(min(w, h)), k))
    bw = np.clip(side * rng.uniform(0.5, 2.0, k), 2, w - 1)
    bh = np.clip(side * rng.uniform(0.5, 2.0, k), 2, h - 1)
    x = rng.uniform(0, w - bw)
    y = rng.uniform(0, h - bh)
    return np.stack([x, y, bw, bh], axis=1)


def random_box(rng: np.random.Generator, w: int, h: int) -> list[float]:
    """One such box, to 0.01 px (a generated ground-truth box)."""
    return [round(float(v), 2) for v in random_boxes(rng, 1, w, h)[0]]


def _scores(rng: np.random.Generator, a, b, k: int) -> np.ndarray:
    return SCORE_FLOOR + (1.0 - SCORE_FLOOR) * rng.beta(a, b, k)


def image_detections(rng: np.random.Generator, width: int, height: int, annotations: list[dict],
                     per_image: int = DETECTIONS_PER_IMAGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's answer: boxes xyxy float64 [N, 4] (float32 values, clipped to the image), scores float32 [N],
    COCO category ids int64 [N], in the order made (true boxes first); N may be 0. Drawn with whole arrays
    (a sim device makes one for every image it answers: about 0.1 ms, against 1.5 ms drawn one number at a time)."""
    if rng.random() < NOTHING_FOUND_FRACTION:
        return np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64)
    n = int(np.clip(rng.poisson(per_image), 1, MAX_DETS))
    truth = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4)
    true_cats = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    copies = np.where(rng.random(len(truth)) < MISSED_FRACTION, 0, rng.integers(1, 4, len(truth)))
    which = np.repeat(np.arange(len(truth)), copies)  # the find, then duplicates, each jittered
    first = np.ones(len(which), bool)
    first[1:] = which[1:] != which[:-1]
    x, y, bw, bh = truth[which].T
    found = np.stack([x, y, x + bw, y + bh], axis=1) + rng.normal(0, 0.08, (len(which), 4)) * np.stack(
        [bw, bh, bw, bh], axis=1)
    wrong = rng.random(len(which)) < WRONG_CLASS_FRACTION
    cats = np.where(wrong, CATEGORY_IDS[rng.integers(0, 80, len(which))], true_cats[which])
    good = first & ~wrong
    scores = _scores(rng, np.where(good, 5, 2), np.where(good, 2, 5), len(which))
    k = max(0, n - len(which))  # false positives
    fp = np.round(random_boxes(rng, k, width, height), 2)
    boxes = np.concatenate([found, np.concatenate([fp[:, :2], fp[:, :2] + fp[:, 2:]], axis=1)])[:n]
    scores = np.concatenate([scores, _scores(rng, 1, 6, k)])[:n]
    cats = np.concatenate([cats, CATEGORY_IDS[rng.integers(0, 80, k)]])[:n]
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes.astype(np.float32).astype(np.float64), scores.astype(np.float32), cats.astype(np.int64)


def seeded_rng(image_id: int) -> np.random.Generator:
    """The generator of one image's answer: the same for this image id everywhere."""
    return np.random.default_rng([ANSWER_SEED, int(image_id)])


def load_images(annotation_path: str | Path) -> dict[int, tuple[int, int, list[dict]]]:
    """image id -> (width, height, its annotations in file order)."""
    data = json.loads(Path(annotation_path).read_text())
    out = {int(im["id"]): (int(im["width"]), int(im["height"]), []) for im in data["images"]}
    for a in data["annotations"]:
        if int(a["image_id"]) in out:
            out[int(a["image_id"])][2].append(a)
    return out


class DetectorLikeBackend(AnnotationAnswers):
    """Detections made by `image_detections` for each image, sorted by score as a model outputs them."""

    name = "detector-like"

    def read(self, annotation_path: str) -> dict:
        return load_images(annotation_path)

    def answer(self, table: dict, image_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if image_id not in table:
            return np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64)
        width, height, anns = table[image_id]
        boxes, scores, cats = image_detections(seeded_rng(image_id), width, height, anns)
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order], _LABEL_OF[cats[order]]
