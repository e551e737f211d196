"""Pre- and post-processing reproduce the oracle's inputs and its mapping back to original pixels."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.postprocess import to_coco_results
from model.preprocess import load_image, plan_geometry, preprocess
from model_support import CASES, INTERMEDIATE_CASES, digest_mismatches, load_digests, load_reference, oracle_image

# COCO's 80 category ids: 1..90 without the ten ids the 2017 annotations never use.
COCO_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def network_input(name: str, mode: str):
    x, meta = preprocess(load_image(oracle_image(name)), mode)
    return np.ascontiguousarray(x[None]), meta


@pytest.mark.parametrize("name,mode", INTERMEDIATE_CASES)
def test_full_inputs_are_bit_exact(name, mode):
    """The four inputs mmdet stored in full (the 1216 static canvases among them): same float32 bytes; the
    summary numbers say how far off when not."""
    x, _ = network_input(name, mode)
    assert digest_mismatches(x, load_digests(name, mode)["input"], bit_exact=True) == []


@pytest.mark.parametrize("name,mode", CASES)
def test_input_sha256_and_meta(name, mode):
    ref = load_reference(name, mode)
    x, meta = network_input(name, mode)
    assert hashlib.sha256(x.tobytes()).hexdigest() == str(ref["input_sha256"])
    assert list(x.shape) == list(ref["input_shape"])
    if mode == "mmdet":
        assert (meta.clip_h, meta.clip_w) == tuple(ref["img_shape"][:2])
        assert (meta.input_h, meta.input_w) == tuple(ref["pad_shape"][:2])
        assert (meta.ori_h, meta.ori_w) == tuple(ref["ori_shape"][:2])
        sf = np.array([meta.w_scale, meta.h_scale] * 2, dtype=np.float32)
        assert np.array_equal(sf, ref["scale_factor"])
    else:
        # The static npz's img/pad/ori shapes are the canvas: mmdet saw only the canvas.
        assert (meta.clip_h, meta.clip_w) == tuple(ref["img_shape"][:2]) == (1216, 1216)
        assert (meta.ori_w, meta.ori_h) == tuple(ref["orig_wh"])
        assert (meta.new_w, meta.new_h) == tuple(ref["resized_wh"])
        assert (meta.pad_left, meta.pad_top) == (int(ref["pad_left"]), int(ref["pad_top"]))
        assert meta.w_scale == float(ref["w_scale"]) and meta.h_scale == float(ref["h_scale"])


@pytest.mark.parametrize("name,mode", CASES)
def test_postprocess_maps_back_like_the_oracle(name, mode):
    """The product's COCO results from mmdet's network-frame detections, padded to the model's 100 rows, equal
    mmdet's original-frame ones: mmdet mode dets_resized -> dets_rescaled (rescale=True), static mode canvas
    dets -> dets_orig; same boxes, scores and classes, in mmdet's order, padding dropped."""
    ref = load_reference(name, mode)
    if mode == "mmdet":
        h, w = ref["ori_shape"][:2]
        dets, labels = ref["dets_resized"], ref["labels_resized"]
        expected, expected_labels = ref["dets_rescaled"], ref["labels_rescaled"]
    else:
        w, h = ref["orig_wh"]  # not ori_shape: that is the canvas
        dets, labels, expected, expected_labels = ref["dets"], ref["labels"], ref["dets_orig"], ref["labels"]
    n = len(dets)
    padded_dets = np.zeros((100, 5), np.float32)
    padded_labels = np.full(100, -1, np.int64)
    padded_dets[:n], padded_labels[:n] = dets, labels
    results = to_coco_results(padded_dets, padded_labels, plan_geometry(int(h), int(w), mode), image_id=7)
    assert len(results) == n == len(expected) and {r["image_id"] for r in results} == {7}
    x1, y1, x2, y2 = (expected[:, i].astype(np.float64) for i in range(4))
    assert [r["bbox"] for r in results] == np.stack([x1, y1, x2 - x1, y2 - y1], axis=1).tolist()
    assert [r["score"] for r in results] == expected[:, 4].astype(np.float64).tolist()
    assert [r["category_id"] for r in results] == [COCO_IDS[label] for label in expected_labels]
