"""The streamed COCOeval gives pycocotools' one-go numbers bit for bit, in whatever order and repeats shards come."""
from __future__ import annotations

import contextlib
import io
import json
import random

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluation.streaming import StreamingCocoEval
from orchestrator.generated_set import cut_into_shards, detections_as_results, make_annotations, make_detections
from evaluation.coco_eval import evaluate

SHARD = 16


def reference_arrays(path, results):
    """pycocotools' own precision and recall arrays for these results, in one go."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes([dict(r) for r in results]), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"], ev.eval["recall"]


def shards_of(data, results, size=SHARD):
    return cut_into_shards(data, results, size)


def streamed(path, shards, seed=0):
    ev = StreamingCocoEval(str(path))
    shards = list(shards)
    random.Random(seed).shuffle(shards)
    for ids, results in shards:
        ev.add(ids, results)
    return ev


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A val2017-like set: all 80 classes, crowd boxes, images without boxes or without detections."""
    data = make_annotations(300, seed=21)
    path = tmp_path_factory.mktemp("stream") / "instances.json"
    path.write_text(json.dumps(data))
    results = detections_as_results(make_detections(data, seed=22))
    return path, data, results, evaluate(str(path), results, "pycocotools")


def test_the_set_has_every_awkward_case(generated):
    _, data, results, ref = generated
    crowd = {(a["image_id"], a["category_id"]) for a in data["annotations"] if a["iscrowd"]}
    answered = {r["image_id"] for r in results}
    assert len({a["category_id"] for a in data["annotations"]}) == 80 and None not in ref["per_class"].values()
    assert any((r["image_id"], r["category_id"]) in crowd for r in results)  # detections on crowd boxes
    assert any(im["id"] not in {a["image_id"] for a in data["annotations"]} for im in data["images"])
    assert any(im["id"] not in answered for im in data["images"])
    assert 0.0 < ref["stats"]["AP"] < 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_shards_in_any_order_give_pycocotools_numbers_bit_for_bit(generated, seed):
    path, data, results, ref = generated
    ev = streamed(path, shards_of(data, results), seed)
    out = ev.finish()
    assert out["stats"] == ref["stats"]  # exact equality of 12 floats, no tolerance
    assert out["per_class"] == ref["per_class"] and len(out["per_class"]) == 80
    assert out["detections"] == len(results) and out["refused"] == []


def test_the_curves_are_pycocotools_arrays(generated):
    path, data, results, _ = generated
    precision, recall = streamed(path, shards_of(data, results), seed=2).curves()
    want_precision, want_recall = reference_arrays(path, results)
    assert np.array_equal(precision, want_precision) and np.array_equal(recall, want_recall)


def test_a_reissued_shard_and_an_empty_one_count_once(generated):
    path, data, results, ref = generated
    shards = shards_of(data, results)
    ev = StreamingCocoEval(str(path))
    ev.add([], [])
    for ids, res in shards[:5]:
        assert ev.add(ids, res) == sorted(ids)
    ids, res = shards[3]
    assert ev.add(ids, res) == []  # the re-issued shard is refused, every image of it
    overlapping = shards[4][0][-3:] + shards[5][0]
    taken = ev.add(overlapping, [r for r in results if r["image_id"] in set(overlapping)])
    assert taken == sorted(shards[5][0])
    for ids, res in shards[6:]:
        ev.add(ids, res)
    out = ev.finish()
    assert out["stats"] == ref["stats"] and out["per_class"] == ref["per_class"]
    assert out["refused"] == sorted(set(shards[3][0]) | set(shards[4][0][-3:]))
    assert out["detections"] == len(results)


def test_images_never_added_count_as_images_without_detections(generated):
    path, data, results, _ = generated
    shards = shards_of(data, results)
    kept = shards[::2]
    ev = streamed(path, kept + [(shards[1][0], [])])  # one shard answered with no detection at all
    union = [r for _, res in kept for r in res]
    ref = evaluate(str(path), union, "pycocotools")
    out = ev.finish()
    assert out["stats"] == ref["stats"] and out["per_class"] == ref["per_class"]
    assert 0.0 < out["stats"]["AP"] < 1.0


def test_no_detections_at_all_is_zero(generated):
    path, data, _, _ = generated
    ev = streamed(path, [(ids, []) for ids, _ in shards_of(data, [])])
    out = ev.finish()
    assert out["stats"] == evaluate(str(path), [], "pycocotools")["stats"] and out["stats"]["AP"] == 0.0


def test_unknown_images_and_strays_are_dropped(generated):
    path, data, results, _ = generated
    (ids, res), *_ = shards_of(data, results)
    ev = StreamingCocoEval(str(path))
    stray = dict(res[0], image_id=data["images"][-1]["id"])  # an image this shard does not hold
    assert ev.add(ids + [10 ** 9], res + [stray]) == sorted(ids)
    assert ev.refused == [10 ** 9] and ev.detections == len(res)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    data = make_annotations(120, seed=23)
    path = tmp_path_factory.mktemp("small") / "instances.json"
    path.write_text(json.dumps(data))
    return path, data


def test_equal_scores_keep_pycocotools_order(small):
    """Ties across images and inside one image's class, where pycocotools' stable sorts decide the order."""
    path, data = small
    results = detections_as_results(make_detections(data, seed=24))
    for r in results:
        r["score"] = round(r["score"] * 20) / 20  # 20 distinct scores: ties everywhere
    precision, recall = streamed(path, shards_of(data, results, size=7), seed=3).curves()
    want_precision, want_recall = reference_arrays(path, results)
    assert np.array_equal(precision, want_precision) and np.array_equal(recall, want_recall)


def test_more_than_100_detections_of_one_class_in_an_image(small):
    """COCOeval keeps an image's 100 best of a class, with or without ground truth of that class."""
    path, data = small
    results = detections_as_results(make_detections(data, seed=25))
    ann = data["annotations"][0]
    image = next(im for im in data["images"] if im["id"] == ann["image_id"])
    here = {a["category_id"] for a in data["annotations"] if a["image_id"] == image["id"]}
    other = next(a["category_id"] for a in data["annotations"] if a["category_id"] not in here)  # found elsewhere
    rng = np.random.default_rng(0)
    x, y, w, h = ann["bbox"]
    for cat in (ann["category_id"], other):
        for _ in range(130):
            jx, jy = rng.normal(0, 0.1, 2) * [w, h]
            results.append({"image_id": image["id"], "category_id": cat, "bbox": [x + jx, y + jy, w, h],
                            "score": float(rng.uniform(0.8, 1.0))})  # above most true positives: the cut matters
    precision, recall = streamed(path, shards_of(data, results), seed=4).curves()
    want_precision, want_recall = reference_arrays(path, results)
    assert np.array_equal(precision, want_precision) and np.array_equal(recall, want_recall)
