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
_LABEL_OF = {cat: label for label, cat in enumerate(COCO_CATEGORY_IDS)}


def random_box(rng: np.random.Generator, w: int, h: int) -> list[float]:
    """A box [x, y, w, h] of log-uniform size (small, medium and large all occur), inside the image."""
    side = float(np.exp(rng.uniform(np.log(4), np.log(min(w, h)))))
    bw = float(np.clip(side * rng.uniform(0.5, 2.0), 2, w - 1))
    bh = float(np.clip(side * rng.uniform(0.5, 2.0), 2, h - 1))
    x = float(rng.uniform(0, w - bw))
    y = float(rng.uniform(0, h - bh))
    return [round(x, 2), round(y, 2), round(bw, 2), round(bh, 2)]


def _score(rng: np.random.Generator, a: float, b: float) -> float:
    return SCORE_FLOOR + (1.0 - SCORE_FLOOR) * float(rng.beta(a, b))


def image_detections(rng: np.random.Generator, width: int, height: int, annotations: list[dict],
                     per_image: int = DETECTIONS_PER_IMAGE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's answer: boxes xyxy float64 [N, 4] (float32 values, clipped to the image), scores float32 [N],
    COCO category ids int64 [N], in the order made (true boxes first); N may be 0."""
    if rng.random() < NOTHING_FOUND_FRACTION:
        return np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int64)
    n = int(np.clip(rng.poisson(per_image), 1, MAX_DETS))
    boxes, scores, cats = [], [], []
    for a in annotations:
        if rng.random() < MISSED_FRACTION:
            continue
        for copy in range(int(rng.integers(1, 4))):  # the find, then duplicates, each jittered
            x, y, bw, bh = a["bbox"]
            j = rng.normal(0, 0.08, 4) * [bw, bh, bw, bh]
            boxes.append([x + j[0], y + j[1], x + bw + j[2], y + bh + j[3]])
            cat = a["category_id"]
            if rng.random() < WRONG_CLASS_FRACTION:
                cat = int(COCO_CATEGORY_IDS[int(rng.integers(0, 80))])
            scores.append(_score(rng, 5, 2) if copy == 0 and cat == a["category_id"] else _score(rng, 2, 5))
            cats.append(cat)
    while len(boxes) < n:  # false positives
        x, y, bw, bh = random_box(rng, width, height)
        boxes.append([x, y, x + bw, y + bh])
        scores.append(_score(rng, 1, 6))
        cats.append(int(COCO_CATEGORY_IDS[int(rng.integers(0, 80))]))
    out = np.asarray(boxes[:n], dtype=np.float64)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)
    return (out.astype(np.float32).astype(np.float64), np.asarray(scores[:n], dtype=np.float32),
            np.asarray(cats[:n], dtype=np.int64))


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
        return boxes[order], scores[order], np.array([_LABEL_OF[int(c)] for c in cats[order]], dtype=np.int64)
