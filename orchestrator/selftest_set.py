"""A generated COCO-format set that exercises every awkward case the pipeline must get right.

Odd sizes, COCO's non-contiguous image and category ids, grayscale / RGBA / CMYK / PNG / JPEG
files, an image without annotations, a crowd box, boxes touching every border, all three
COCO area ranges.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from model.config import COCO_CATEGORY_IDS, COCO_CLASSES

# (image id, file, width, height, colour mode, [(category id, [x, y, w, h], iscrowd)])
CASES = (
    (139, "000000000139.jpg", 131, 97, "bgr", [(1, [10.5, 12.25, 40, 30], 0), (90, [70, 50, 50, 40], 0)]),
    (285, "000000000285.png", 203, 151, "gray", [(13, [0, 0, 60, 45], 0), (3, [143, 106, 60, 45], 0)]),
    (632, "000000000632.png", 240, 180, "rgba", [(44, [30, 20, 100, 120], 0)]),
    (724, "000000000724.jpg", 97, 61, "bgr", []),
    (776, "000000000776.jpg", 300, 211, "bgr", [(1, [0, 0, 150, 100], 1), (1, [160, 110, 120, 90], 0)]),
    (785, "000000000785.jpg", 640, 427, "bgr",
     [(3, [20, 30, 20, 15], 0), (3, [100, 100, 60, 50], 0), (90, [300, 150, 250, 200], 0)]),
    (802, "000000000802.png", 333, 517, "bgr", [(13, [0, 200, 333, 100], 0)]),
    (872, "000000000872.jpg", 800, 99, "bgr", [(44, [700, 0, 100, 99], 0), (1, [0, 10, 64.5, 80], 0)]),
    (885, "000000000885.jpg", 157, 229, "gray", [(1, [5.5, 7.25, 99.5, 150.25], 0)]),
    (1000, "000000001000.jpg", 211, 173, "cmyk", [(3, [50, 40, 80, 60], 0), (90, [0, 120, 211, 53], 0)]),
)


def _draw(width: int, height: int, boxes: list, seed: int) -> np.ndarray:
    """Noise background with a filled, outlined rectangle per box (BGR uint8)."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, size=(height, width, 3), dtype=np.uint8)
    for k, (_, (x, y, w, h), _) in enumerate(boxes):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p1, p2 = (int(round(x)), int(round(y))), (int(round(x + w)) - 1, int(round(y + h)) - 1)
        cv2.rectangle(img, p1, p2, colour, thickness=-1)
        cv2.rectangle(img, p1, p2, (255 - k * 40 % 256, 0, 0), thickness=1)
    return img


def _write(path: Path, img_bgr: np.ndarray, mode: str) -> None:
    if mode == "gray":
        ok = cv2.imwrite(str(path), cv2.cvtColor(img_bgr, cv2.COLOR_BGR2GRAY))
    elif mode == "rgba":
        alpha = np.full(img_bgr.shape[:2], 128, dtype=np.uint8)
        ok = cv2.imwrite(str(path), np.dstack([img_bgr, alpha]))
    elif mode == "cmyk":
        Image.fromarray(img_bgr[..., ::-1]).convert("CMYK").save(path, "JPEG", quality=95)
        ok = True
    else:
        ok = cv2.imwrite(str(path), img_bgr)
    if not ok:
        raise OSError(f"cannot write {path}")


def write_selftest_set(folder: str | Path, limit: int | None = None) -> tuple[Path, Path]:
    """Write images and `annotations.json` under `folder`; returns (annotation path, image folder)."""
    folder = Path(folder)
    image_dir = folder / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    cases = CASES[:limit] if limit else CASES
    images, annotations, used = [], [], set()
    ann_id = 1
    for image_id, name, width, height, mode, boxes in cases:
        _write(image_dir / name, _draw(width, height, boxes, seed=image_id), mode)
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for cat, (x, y, w, h), crowd in boxes:
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": [x, y, w, h],
                                "area": w * h, "iscrowd": crowd, "segmentation": []})
            used.add(cat)
            ann_id += 1
    names = dict(zip(COCO_CATEGORY_IDS, COCO_CLASSES))
    categories = [{"id": c, "name": names[c], "supercategory": "selftest"} for c in sorted(used or {1})]
    annotation = folder / "annotations.json"
    annotation.write_text(json.dumps({"info": {"description": "generated selftest set"}, "images": images,
                                      "annotations": annotations, "categories": categories}))
    return annotation, image_dir
