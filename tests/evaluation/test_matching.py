"""match_detections: same label, corners and score within tolerance, one partner each."""
from __future__ import annotations

import numpy as np

from evaluation.matching import match_detections

REF = np.array([[10, 10, 50, 50, 0.9], [100, 100, 150, 160, 0.5], [0, 0, 5, 5, 0.2]], dtype=np.float32)
LABELS = np.array([1, 2, 1])


def padded(dets, labels, size=100):
    d = np.zeros((size, 5), np.float32)
    lab = np.full(size, -1, np.int64)
    d[:len(dets)], lab[:len(labels)] = dets, labels
    return d, lab


def test_identical_detections_all_match_and_padding_is_ignored():
    m = match_detections(REF, LABELS, *padded(REF, LABELS))
    assert (m.ref_count, m.matched, m.extra, m.max_box_diff, m.max_score_diff) == (3, 3, 0, 0.0, 0.0)
    assert m.matched_fraction == 1.0


def test_tolerances_are_per_corner_and_per_score():
    moved = REF.copy()
    moved[0, 2] += 0.049
    moved[1, 0] += 0.051  # one corner beyond 0.05 px
    moved[2, 4] += 2e-4  # score beyond 1e-4
    m = match_detections(REF, LABELS, moved, LABELS)
    assert (m.matched, m.extra, m.unmatched) == (1, 2, 2)
    assert abs(m.max_box_diff - 0.049) < 1e-5


def test_label_must_agree_and_each_produced_detection_is_used_once():
    m = match_detections(REF, LABELS, REF, np.array([1, 3, 1]))
    assert (m.matched, m.extra) == (2, 1)
    twice = np.concatenate([REF[:1], REF[:1]])
    m = match_detections(twice, np.array([1, 1]), REF[:1], np.array([1]))
    assert (m.ref_count, m.matched, m.extra) == (2, 1, 0)


def test_empty_inputs():
    m = match_detections(np.zeros((0, 5)), np.zeros(0), *padded(np.zeros((0, 5)), np.zeros(0)))
    assert (m.ref_count, m.matched, m.extra) == (0, 0, 0) and m.matched_fraction == 1.0
    m = match_detections(REF, LABELS, np.zeros((0, 5)), np.zeros(0))
    assert (m.matched, m.extra) == (0, 0)
