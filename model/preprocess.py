"""mmdet's test pipeline (`mmdet` mode) and the Ascend recipe's canvas (`static` mode), bit-exact.

The work is split in two so that the tensor store can keep the small uint8 resized image:
`resize_image` (decode + keep-ratio resize, uint8) and `to_network_input` (normalise + pad,
float32). Doing them in two steps gives exactly the bytes of doing them in one go.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from model.config import PREPROCESS, PreprocessConfig

SIZE_MODES = ("mmdet", "static")


class ImageReadError(ValueError):
    """An image file that is missing or cannot be decoded."""


@dataclass(frozen=True)
class ImageMeta:
    """Where an image sits inside the network input, and how to map boxes back."""

    size_mode: str
    ori_h: int
    ori_w: int
    new_h: int  # resized image, before padding
    new_w: int
    pad_top: int  # offset of the resized image in the network input
    pad_left: int
    input_h: int  # network input size (padded)
    input_w: int
    clip_h: int  # boxes are clipped to [0, clip_w] x [0, clip_h] inside the model
    clip_w: int

    @property
    def w_scale(self) -> float:
        return self.new_w / self.ori_w

    @property
    def h_scale(self) -> float:
        return self.new_h / self.ori_h

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ImageMeta":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode like mmcv's `imfrombytes(flag='color')`: uint8 BGR HxWx3, gray expanded, alpha dropped, EXIF applied."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise ImageReadError(f"cannot read image ({path}): {exc.strerror or exc}") from exc
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ImageReadError(f"cannot decode image ({path})")
    return img


def _rescaled_size(h: int, w: int, long_bound: int, short_bound: int) -> tuple[int, int]:
    """mmcv.imrescale's size: one float64 factor, then round half up per axis."""
    sf = min(long_bound / max(h, w), short_bound / min(h, w))
    return int(h * sf + 0.5), int(w * sf + 0.5)


def plan_geometry(ori_h: int, ori_w: int, size_mode: str, cfg: PreprocessConfig = PREPROCESS,
                  static_size: int | None = None) -> ImageMeta:
    """The resize size, offsets and network input size for an image of ori_h x ori_w."""
    if size_mode == "mmdet":
        long_b, short_b = max(cfg.mmdet_scale), min(cfg.mmdet_scale)
        new_h, new_w = _rescaled_size(ori_h, ori_w, long_b, short_b)
        d = cfg.size_divisor
        in_h, in_w = -(-new_h // d) * d, -(-new_w // d) * d
        return ImageMeta(size_mode, ori_h, ori_w, new_h, new_w, 0, 0, in_h, in_w, new_h, new_w)
    if size_mode == "static":
        s = static_size or cfg.static_size
        new_h, new_w = _rescaled_size(ori_h, ori_w, s, s)
        top, left = (s - new_h) // 2, (s - new_w) // 2
        return ImageMeta(size_mode, ori_h, ori_w, new_h, new_w, top, left, s, s, s, s)
    raise ValueError(f"unknown size mode {size_mode!r} (--size-mode): choose from {', '.join(SIZE_MODES)}")


def resize_image(img_bgr: np.ndarray, size_mode: str, static_size: int | None = None,
                 cfg: PreprocessConfig = PREPROCESS) -> tuple[np.ndarray, ImageMeta]:
    """Keep-ratio bilinear resize on the uint8 image; returns the resized uint8 BGR image and its meta."""
    h, w = img_bgr.shape[:2]
    meta = plan_geometry(h, w, size_mode, cfg, static_size)
    resized = cv2.resize(img_bgr, (meta.new_w, meta.new_h), interpolation=cv2.INTER_LINEAR)
    return resized, meta


def to_network_input(resized_bgr: np.ndarray, meta: ImageMeta, cfg: PreprocessConfig = PREPROCESS,
                     out: np.ndarray | None = None) -> np.ndarray:
    """float32 CHW [3, input_h, input_w]: normalised image at its offset, zeros elsewhere.

    BGR -> RGB, then float32 (v - mean) / std per element (bit-equal to mmcv.imnormalize), written
    plane by plane straight into place: no transposed copy, only the padding is zeroed.
    """
    if out is None:
        out = np.empty((3, meta.input_h, meta.input_w), dtype=np.float32)
    top, left, h, w = meta.pad_top, meta.pad_left, meta.new_h, meta.new_w
    out[:, :top] = 0
    out[:, top + h:] = 0
    out[:, top:top + h, :left] = 0
    out[:, top:top + h, left + w:] = 0
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    for c in range(3):  # RGB plane c is BGR channel 2 - c
        plane = out[c, top:top + h, left:left + w]
        np.subtract(resized_bgr[:, :, 2 - c], mean[c], out=plane, dtype=np.float32)
        np.divide(plane, std[c], out=plane)
    return out


def preprocess(img_bgr: np.ndarray, size_mode: str, static_size: int | None = None,
               cfg: PreprocessConfig = PREPROCESS) -> tuple[np.ndarray, ImageMeta]:
    """One image to its network input [3, H, W] and meta."""
    resized, meta = resize_image(img_bgr, size_mode, static_size, cfg)
    return to_network_input(resized, meta, cfg), meta


def clip_sizes(metas: list[ImageMeta]) -> np.ndarray:
    """float32 [B, 2] (clip_h, clip_w): the per-image input the model needs to clip boxes exactly."""
    return np.asarray([(m.clip_h, m.clip_w) for m in metas], dtype=np.float32).reshape(-1, 2)


def stack_batch(inputs: list[np.ndarray], batch_size: int | None = None) -> np.ndarray:
    """[B, 3, H, W] from same-shape inputs; zero canvases fill a short batch up to batch_size."""
    if not inputs:
        raise ValueError("empty batch")
    shapes = {x.shape for x in inputs}
    if len(shapes) != 1:
        raise ValueError(f"a batch needs one input shape, got {sorted(shapes)}")
    n = batch_size or len(inputs)
    batch = np.zeros((n,) + inputs[0].shape, dtype=np.float32)
    for i, x in enumerate(inputs):
        batch[i] = x
    return batch
