"""Cutting a job into shards and a shard into batches of one input shape."""
from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

from model.preprocess import plan_geometry

SHARDS_PER_DEVICE = 8
TAIL_ROUNDS = 2  # the shrinking tail spreads the last remaining work over about two rounds of the devices


class AnnotationError(ValueError):
    """A missing or malformed annotation file."""


def read_images(annotation_path: str | Path) -> list[dict]:
    """The annotation file's images as {"id", "file", "w", "h"}, in file order."""
    return read_annotation(annotation_path)[1]


def read_annotation(annotation_path: str | Path) -> tuple[dict, list[dict]]:
    """The parsed COCO instances file and its images as `read_images` gives them."""
    path = Path(annotation_path)
    if not path.is_file():
        raise AnnotationError(f"annotation file not found ({path})")
    try:
        data = json.loads(path.read_text())
        images = [{"id": int(im["id"]), "file": str(im["file_name"]),
                   "w": int(im.get("width") or 0), "h": int(im.get("height") or 0)}
                  for im in data["images"]]
        data["annotations"], data["categories"]  # noqa: B018 - COCOeval needs both
    except (ValueError, KeyError, TypeError) as exc:
        raise AnnotationError(f"not a COCO instances file: {exc.__class__.__name__} {exc} ({path})") from exc
    if not images:
        raise AnnotationError(f"annotation file lists no images ({path})")
    return data, images


def input_shape(item: dict, size_mode: str, static_size: int) -> tuple[int, int]:
    """The padded network-input shape an image will get (from the annotation's width/height)."""
    if size_mode == "static":
        return static_size, static_size
    if item["w"] <= 0 or item["h"] <= 0:
        return 0, 0  # unknown: its own bucket, regrouped after loading
    meta = plan_geometry(item["h"], item["w"], size_mode)
    return meta.input_h, meta.input_w


def default_shard_size(n_images: int, batch: int, n_devices: int) -> int:
    """A whole number of batches, small enough that every device gets at least 8 shards."""
    per_shard = n_images // (SHARDS_PER_DEVICE * max(1, n_devices))
    return max(batch, per_shard // batch * batch)


def tail_sizes(n_images: int, batch: int, n_devices: int, max_size: int) -> list[int]:
    """Shard sizes that shrink toward the end, so the last wave is one batch per device.

    Each shard takes about remaining / (TAIL_ROUNDS x devices) images, rounded up to whole
    batches, between one batch and `max_size`: early shards are full size, and a device that
    finishes late (slower, or unlucky in the pull order) is behind the others by one small
    shard at most, not by a full one.
    """
    sizes, remaining = [], n_images
    while remaining > 0:
        want = -(-remaining // (TAIL_ROUNDS * max(1, n_devices)))
        size = min(max_size, max(batch, -(-want // batch) * batch), remaining)
        sizes.append(size)
        remaining -= size
    return sizes


def plan_shards(images: list[dict], batch: int, n_devices: int, size_mode: str, static_size: int,
                shard_size: int = 0) -> list[list[dict]]:
    """Images sorted into shape buckets (stable), cut into shards: `shard_size` images each when given,
    else full-size shards that shrink to one batch at the end (`tail_sizes`)."""
    ordered = sorted(images, key=lambda im: input_shape(im, size_mode, static_size))
    if shard_size:
        return [ordered[i:i + shard_size] for i in range(0, len(ordered), shard_size)]
    shards, start = [], 0
    for size in tail_sizes(len(ordered), batch, n_devices, default_shard_size(len(images), batch, n_devices)):
        shards.append(ordered[start:start + size])
        start += size
    return shards


def plan_batches(items: list, batch: int, shape_of) -> list[list]:
    """Batches of at most `batch` items that share `shape_of(item)`, in first-seen shape order."""
    groups: OrderedDict = OrderedDict()
    for item in items:
        groups.setdefault(shape_of(item), []).append(item)
    return [group[i:i + batch] for group in groups.values() for i in range(0, len(group), batch)]
