"""Helpers of the export tests: network inputs from photographs, torch references, ONNX Runtime sessions."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np


def network_inputs(paths: list[Path], size: int, flip: bool = False):
    """Static-canvas inputs [B,3,S,S], clip_hw [B,2] and metas; `flip` mirrors each image first."""
    import cv2

    from model.preprocess import clip_sizes, load_image, preprocess
    inputs, metas = [], []
    for path in paths:
        img = load_image(path)
        x, meta = preprocess(cv2.flip(img, 1) if flip else img, "static", static_size=size)
        inputs.append(x)
        metas.append(meta)
    return np.stack(inputs), clip_sizes(metas), metas


class TorchReference:
    """The torch model's detections per image (batch 1), computed once per (image, size, flip)."""

    def __init__(self, detector):
        self.detector = detector
        self.cache: dict = {}

    def __call__(self, path: Path, size: int, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
        import torch

        key = (path, size, flip)
        if key not in self.cache:
            images, clip, _ = network_inputs([path], size, flip)
            with torch.no_grad():
                dets, labels = self.detector(torch.from_numpy(images), torch.from_numpy(clip))
            self.cache[key] = (dets[0].numpy(), labels[0].numpy())
        return self.cache[key]


def ort_session(path, threads: int = 2):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(path if isinstance(path, (str, bytes)) else str(path), options,
                                providers=["CPUExecutionProvider"])


def photo_set(folder: Path, photos: list[Path]) -> Path:
    """A COCO-format set of these photographs (copied into folder/images, one made-up box each); its annotation file."""
    from model.config import COCO_CATEGORY_IDS, COCO_CLASSES
    from model.preprocess import load_image
    (folder / "images").mkdir(parents=True)
    images, annotations = [], []
    for image_id, photo in enumerate(photos, start=1):
        name = f"{image_id:012d}{photo.suffix}"
        shutil.copy(photo, folder / "images" / name)
        h, w = load_image(photo).shape[:2]
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        annotations.append({"id": image_id, "image_id": image_id, "category_id": 1, "bbox": [10, 10, 50, 80],
                            "area": 4000.0, "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann
