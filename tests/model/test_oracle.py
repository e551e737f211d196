"""The model reproduces mmdetection 2.8.0 + mmcv-full 1.7.2 (the oracle fixture), stage by stage.

All forward passes come from one `oracle_runner.py` process (fixture `oracle_run`), run in the
oracle's arithmetic (model_support.ORACLE_ARITHMETIC explains why).
"""
from __future__ import annotations

import numpy as np
import pytest

import model_support
from evaluation.matching import match_detections
from model_support import CASES, IMAGES, INTERMEDIATE_CASES, MODES, load_reference

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def oracle_run(tmp_path_factory):
    return model_support.oracle_run(tmp_path_factory)


def reference_detections(ref: dict, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """mmdet's detections in our output frame: resized image (mmdet mode) or canvas (static mode)."""
    if mode == "mmdet":
        return ref["dets_resized"], ref["labels_resized"]
    return ref["dets"], ref["labels"]


@pytest.mark.parametrize("mode", MODES)
def test_detections_reproduce_the_oracle(oracle_run, mode):
    """>= 99.9 % of mmdet's detections matched (same class, corners within 0.05 px, score within 1e-4),
    and at most 0.1 % extra, over the five photographs of a size mode."""
    ref_count = matched = extra = 0
    lines = []
    for name in IMAGES:
        ref_dets, ref_labels = reference_detections(load_reference(name, mode), mode)
        ours = oracle_run[f"{name}_{mode}"]
        m = match_detections(ref_dets, ref_labels, ours["dets"], ours["labels"], box_tol=0.05, score_tol=1e-4)
        ref_count, matched, extra = ref_count + m.ref_count, matched + m.matched, extra + m.extra
        lines.append(f"{name} {mode}: {m.matched}/{m.ref_count} matched, {m.extra} extra, "
                     f"max box diff {m.max_box_diff:.2e}, max score diff {m.max_score_diff:.2e}")
    print("\n".join(lines))
    assert ref_count > 300, "the oracle holds a few hundred detections per mode"
    assert matched >= 0.999 * ref_count, "\n".join(lines)
    assert extra <= 0.001 * ref_count, "\n".join(lines)


@pytest.mark.parametrize("name,mode", CASES)
def test_outputs_have_the_contract_shape(oracle_run, name, mode):
    """[100, 5] / [100] per image, sorted by score, padding rows score 0, box 0, label -1."""
    dets, labels = oracle_run[f"{name}_{mode}"]["dets"], oracle_run[f"{name}_{mode}"]["labels"]
    assert dets.shape == (100, 5) and dets.dtype == np.float32
    assert labels.shape == (100,) and labels.dtype == np.int64
    real = labels >= 0
    n = int(real.sum())
    assert real[:n].all() and not real[n:].any()
    assert (np.diff(dets[:n, 4]) <= 0).all() and (dets[:n, 4] > 0.05).all()
    assert (dets[n:] == 0).all() and (labels[:n] < 80).all()


@pytest.mark.parametrize("name,mode", CASES)
def test_input_hash_equals_the_oracle_input(oracle_run, name, mode):
    ours, ref = oracle_run[f"{name}_{mode}"], load_reference(name, mode)
    assert list(ours["input_shape"]) == list(ref["input_shape"])
    assert str(ours["input_sha256"]) == str(ref["input_sha256"])


def sorted_proposals(p: np.ndarray) -> np.ndarray:
    """Descending score, ties broken by the box (mmdet's order among equal scores is undefined)."""
    return p[np.lexsort((p[:, 3], p[:, 2], p[:, 1], p[:, 0], -p[:, 4]))]


@pytest.mark.parametrize("name,mode", CASES)
def test_proposals_reproduce_the_oracle(oracle_run, name, mode):
    """Same 1000 proposals, same scores bit for bit; corners within 2 ulp of the image size.

    The remaining corner differences (about 1 % of the rows, 1 ulp) come from float32 `exp` in the
    delta decoding: torch computes it with MKL's vector math, whose last bit depends on MKL's code
    path; the oracle's build took another path than AVX2 (MKL_CBWR=COMPATIBLE reproduces its value
    on the rows checked) and no single MKL setting reproduces both its GEMM and its exp here.
    """
    ours = sorted_proposals(oracle_run[f"{name}_{mode}"]["proposals"])
    reference = load_reference(name, mode)
    ref = sorted_proposals(reference["proposals"])
    assert ours.shape == ref.shape == (1000, 5)
    assert np.array_equal(ours[:, 4], ref[:, 4])
    two_ulp = 2 * np.spacing(np.float32(max(reference["input_shape"][2:])))  # corners are sums of such terms
    diff = np.abs(ours[:, :4] - ref[:, :4])
    assert diff.max() <= two_ulp, f"max corner diff {diff.max():.3g}"
    assert (diff > 0).any(axis=1).mean() < 0.05, "more than a few rows off by round-off"


@pytest.mark.parametrize("name,mode", INTERMEDIATE_CASES)
def test_backbone_and_fpn_are_bit_exact(oracle_run, name, mode):
    """C3 (first DCN stage) and P2..P6 slices equal mmdet's bit for bit (offsets passed unchanged)."""
    ours, ref = oracle_run[f"{name}_{mode}"], load_reference(name, mode)
    pairs = {"c3": "backbone_c3_c0_7", "p2": "fpn_p2_c0_3", "p3": "fpn_p3_c0_7", "p4": "fpn_p4_c0_7",
             "p5": "fpn_p5_c0_7", "p6": "fpn_p6_c0_7"}
    diffs = {k: float(np.abs(ours[k] - ref[v]).max()) for k, v in pairs.items()}
    assert all(ours[k].shape == ref[v].shape for k, v in pairs.items())
    assert all(d == 0.0 for d in diffs.values()), diffs


@pytest.mark.parametrize("name,mode", INTERMEDIATE_CASES)
def test_box_head_reproduces_the_oracle_on_its_proposals(oracle_run, name, mode):
    """Softmax scores of the 1000 proposals (background last) and the class-NMS candidates."""
    ours, ref = oracle_run[f"{name}_{mode}"], load_reference(name, mode)
    assert ours["head_scores"].shape == ref["bbox_head_scores"].shape == (1000, 81)
    assert np.abs(ours["head_scores"] - ref["bbox_head_scores"]).max() <= 1e-6
    assert np.array_equal(ours["cand_index"], ref["bbox_head_cand_index"])
    assert np.abs(ours["cand_scores"] - ref["bbox_head_cand_scores"]).max() <= 1e-6
    assert np.abs(ours["cand_boxes"] - ref["bbox_head_cand_boxes"]).max() <= 1e-3
