"""Pre- and post-processing reproduce the oracle's inputs and its mapping back to original pixels."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from model.postprocess import to_original_frame
from model.preprocess import load_image, plan_geometry, preprocess
from model_support import CASES, load_reference, oracle_image, require_oracle


def network_input(name: str, mode: str):
    x, meta = preprocess(load_image(oracle_image(name)), mode)
    return np.ascontiguousarray(x[None]), meta


def test_static_astronaut_input_is_bit_exact():
    expected = np.load(require_oracle() / "astronaut_static_centered_input.npy")
    x, _ = network_input("astronaut", "static")
    assert x.shape == expected.shape == (1, 3, 1216, 1216)
    assert np.array_equal(x, expected)


@pytest.mark.parametrize("name,mode", [("astronaut", "mmdet"), ("coffee", "mmdet"), ("coffee", "static")])
def test_full_inputs_are_bit_exact(name, mode):
    ref = load_reference(name, mode)
    x, _ = network_input(name, mode)
    assert x.shape == ref["input"].shape
    assert np.array_equal(x, ref["input"])


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
    """mmdet: dets_resized -> dets_rescaled (rescale=True); static: canvas dets -> dets_orig."""
    ref = load_reference(name, mode)
    if mode == "mmdet":
        h, w = ref["ori_shape"][:2]
        dets, expected = ref["dets_resized"], ref["dets_rescaled"]
        assert np.array_equal(ref["labels_resized"], ref["labels_rescaled"])
    else:
        w, h = ref["orig_wh"]  # not ori_shape: that is the canvas
        dets, expected = ref["dets"], ref["dets_orig"]
    meta = plan_geometry(int(h), int(w), mode)
    assert np.array_equal(to_original_frame(dets[:, :4], meta), expected[:, :4])
    assert np.array_equal(dets[:, 4], expected[:, 4])
