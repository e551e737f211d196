"""Fixed-size model outputs (network-input frame) to COCO results in original-image pixels."""
from __future__ import annotations

import numpy as np

from model.config import COCO_CATEGORY_IDS
from model.preprocess import ImageMeta


def to_original_frame(boxes: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Map [N, 4] boxes from the network input to the original image and clip to it.

    mmdet mode divides by mmdet's float32 scale_factor (what `rescale=True` does); static mode
    removes the integer offsets actually used and divides by the per-axis scales.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if meta.size_mode == "mmdet":
        sf = np.array([meta.w_scale, meta.h_scale] * 2, dtype=np.float32)
        out = boxes / sf
    else:
        off = np.array([meta.pad_left, meta.pad_top] * 2, dtype=np.float64)
        sf = np.array([meta.w_scale, meta.h_scale] * 2, dtype=np.float64)
        out = ((boxes.astype(np.float64) - off) / sf).astype(np.float32)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, meta.ori_w)
    out[:, 1::2] = np.clip(out[:, 1::2], 0, meta.ori_h)
    return out


def valid_rows(dets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean mask of real detections (padding rows have label -1 and score 0)."""
    return (np.asarray(labels) >= 0) & (np.asarray(dets)[:, 4] > 0)


def to_coco_results(dets: np.ndarray, labels: np.ndarray, meta: ImageMeta, image_id: int) -> list[dict]:
    """One image's `dets [100,5]`, `labels [100]` as pycocotools `loadRes` entries."""
    dets = np.asarray(dets, dtype=np.float32).reshape(-1, 5)
    labels = np.asarray(labels).reshape(-1)
    keep = valid_rows(dets, labels)
    boxes = to_original_frame(dets[keep, :4], meta)
    results = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), dets[keep, 4].tolist(), labels[keep].tolist()):
        results.append({
            "image_id": int(image_id),
            "category_id": COCO_CATEGORY_IDS[int(label)],
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": score,
        })
    return results


def to_network_frame(boxes_xyxy: np.ndarray, meta: ImageMeta) -> np.ndarray:
    """Inverse of `to_original_frame` (without clipping): original pixels to the network input."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    sf = np.array([meta.w_scale, meta.h_scale] * 2)
    off = np.array([meta.pad_left, meta.pad_top] * 2, dtype=np.float64)
    return (boxes * sf + off).astype(np.float32)
