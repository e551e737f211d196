"""A generated COCO-sized set for benchmarks and evaluator checks: annotations, detections, optional images.

The numbers follow val2017's shape (about 7 boxes an image over all 80 categories, every
area range, crowd boxes, images without annotations); the detections look like a real
detector's (jittered true boxes, duplicates, false positives, up to 100 an image, some
images with none). Same seed, same set.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from model.config import COCO_CATEGORY_IDS, COCO_CLASSES
from workers.backends.detector_like import DETECTIONS_PER_IMAGE, image_detections, random_box

# val2017: 5000 images, 36781 boxes (7.4 an image), 48 images without annotations, about 1% crowd boxes
BOXES_PER_IMAGE = 7.4
EMPTY_FRACTION = 0.01
CROWD_FRACTION = 0.01


def make_annotations(n_images: int, seed: int = 0, first_id: int = 1) -> dict:
    """A COCO instances dict: COCO's 80 categories, sizes around 640x480, ids from `first_id` (step 7)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n_images):
        image_id = first_id + 7 * i  # non-contiguous, like COCO's
        w, h = (640, int(rng.integers(360, 640))) if rng.random() < 0.7 else (int(rng.integers(360, 640)), 640)
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg", "width": w, "height": h})
        if rng.random() < EMPTY_FRACTION:
            continue
        for _ in range(max(1, int(rng.poisson(BOXES_PER_IMAGE)))):
            bbox = random_box(rng, w, h)
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": int(COCO_CATEGORY_IDS[int(rng.integers(0, 80))]),
                         "bbox": bbox, "area": round(bbox[2] * bbox[3] * rng.uniform(0.5, 1.0), 2),
                         "iscrowd": int(rng.random() < CROWD_FRACTION)})
    categories = [{"id": c, "name": n, "supercategory": "thing"} for c, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    return {"images": images, "annotations": anns, "categories": categories}


def make_detections(annotations: dict, per_image: int = DETECTIONS_PER_IMAGE, seed: int = 1) -> np.ndarray:
    """float64 [N, 7] rows (image id, x, y, w, h, score, category id), the COCO numpy results layout.

    Each image's detections come from the sim devices' detector-like answers, in shuffled order (so ties
    and sorting get exercised); widths and heights are float64 differences of float32 corners, like the
    shard runner's results.
    """
    rng = np.random.default_rng(seed)
    by_image: dict[int, list] = {}
    for a in annotations["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    rows = []
    for im in annotations["images"]:
        boxes, scores, cats = image_detections(rng, im["width"], im["height"], by_image.get(im["id"], []), per_image)
        block = np.empty((len(boxes), 7), dtype=np.float64)
        block[:, 0] = im["id"]
        block[:, 1:3] = boxes[:, :2]
        block[:, 3:5] = boxes[:, 2:] - boxes[:, :2]
        block[:, 5] = scores
        block[:, 6] = cats
        rows.append(block[rng.permutation(len(block))])
    return np.concatenate(rows) if rows else np.zeros((0, 7))


def detections_as_results(dets: np.ndarray) -> list[dict]:
    """The same detections as pycocotools `loadRes` entries."""
    return [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3], r[4]], "score": r[5]}
            for r in dets.tolist()]


def cut_into_shards(annotations: dict, results: list[dict], size: int) -> list[tuple[list[int], list[dict]]]:
    """(image ids, their results) per shard of `size` images in file order, as shard results arrive."""
    by_image: dict[int, list] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    ids = [im["id"] for im in annotations["images"]]
    return [(ids[i:i + size], [r for j in ids[i:i + size] for r in by_image.get(j, [])])
            for i in range(0, len(ids), size)]


def write_set(folder: str | Path, n_images: int, seed: int = 0, images: bool = False) -> tuple[Path, Path]:
    """instances.json (and, with `images`, one photo-sized JPEG per image) in `folder`: (annotation, image dir)."""
    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    data = make_annotations(n_images, seed)
    if images:
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)  # smooth areas plus grain, like a photo
        tile = cv2.resize(coarse, (640, 640), interpolation=cv2.INTER_CUBIC)
        tile = cv2.add(tile, rng.integers(0, 24, size=tile.shape, dtype=np.uint8))
        for k, im in enumerate(data["images"]):
            path = image_dir / im["file_name"]
            if not path.is_file():
                pixels = np.roll(tile, k, axis=1)[:im["height"], :im["width"]]
                cv2.imwrite(str(path), pixels, [cv2.IMWRITE_JPEG_QUALITY, 90])
    ann = folder / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, image_dir
