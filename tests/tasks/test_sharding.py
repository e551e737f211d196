"""Shards are whole batches (but the last), at least 8 per device; batches hold one input shape."""
from __future__ import annotations

import json

import pytest

from tasks.shards import AnnotationError, default_shard_size, input_shape, plan_batches, plan_shards, read_images


def images(n, sizes=((640, 480), (480, 640), (500, 375))):
    return [{"id": i * 7 + 1, "file": f"{i}.jpg", "w": sizes[i % len(sizes)][0], "h": sizes[i % len(sizes)][1]}
            for i in range(n)]


@pytest.mark.parametrize("n,batch,devices", [(5000, 8, 1), (5000, 8, 4), (100, 4, 2), (10, 8, 1), (37, 1, 3)])
def test_shards_are_whole_batches_and_enough_per_device(n, batch, devices):
    shards = plan_shards(images(n), batch, devices, "static", 1216)
    sizes = [len(s) for s in shards]
    assert sum(sizes) == n and sorted(i["id"] for s in shards for i in s) == sorted(i["id"] for i in images(n))
    assert all(size % batch == 0 for size in sizes[:-1])
    if n >= 8 * devices * batch:
        assert len(shards) >= 8 * devices


def test_mmdet_mode_sorts_images_into_shape_buckets():
    imgs = images(30, sizes=((640, 480), (480, 640), (1000, 300)))
    shapes = [input_shape(im, "mmdet", 1216) for s in plan_shards(imgs, 4, 1, "mmdet", 1216, shard_size=4) for im in s]
    assert len(set(shapes)) == 3
    assert sum(1 for a, b in zip(shapes, shapes[1:]) if a != b) == 2  # each bucket contiguous


def test_plan_batches_groups_by_shape_and_keeps_order():
    items = [("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 2)]
    assert plan_batches(items, 2, lambda it: it[1]) == [[("a", 1), ("c", 1)], [("d", 1)], [("b", 2), ("e", 2)]]


def test_default_shard_size_never_below_a_batch():
    assert default_shard_size(10, 8, 4) == 8 and default_shard_size(5000, 8, 1) == 624


def test_bad_annotation_files_are_named(tmp_path):
    with pytest.raises(AnnotationError, match=r"annotation file not found \(.*nope.json\)"):
        read_images(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1}]}))
    with pytest.raises(AnnotationError, match=r"not a COCO instances file.*bad.json"):
        read_images(bad)


@pytest.mark.parametrize("n,batch,devices", [(5120, 8, 32), (5000, 8, 32), (160, 8, 1), (5000, 8, 1), (333, 4, 3)])
def test_shards_shrink_to_one_batch_at_the_end(n, batch, devices):
    sizes = [len(s) for s in plan_shards(images(n), batch, devices, "static", 1216)]
    full = default_shard_size(n, batch, devices)
    assert sum(sizes) == n and max(sizes) == full and sizes[0] == full
    assert all(a >= b for a, b in zip(sizes, sizes[1:-1]))  # never grows again (the last may be a remainder)
    assert sizes[-1] <= batch and all(s % batch == 0 for s in sizes[:-1])
    tail = sizes[-devices - 1:-1] if sizes[-1] < batch else sizes[-devices:]
    assert all(s == batch for s in tail)  # the last wave: one batch per device


def test_an_explicit_shard_size_is_kept():
    assert [len(s) for s in plan_shards(images(50), 4, 2, "static", 1216, shard_size=12)] == [12, 12, 12, 12, 2]
