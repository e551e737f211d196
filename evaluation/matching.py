"""Compare produced detections with reference ones: same class, corners and score within tolerances."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MatchResult:
    """How many reference detections found a partner, how many produced ones were left over."""

    ref_count: int
    matched: int
    extra: int  # produced detections matched by no reference detection
    max_box_diff: float  # over matched pairs (0 when none)
    max_score_diff: float
    pairs: tuple = ()  # (reference row, produced row) of each match, rows counted without padding

    @property
    def unmatched(self) -> int:
        return self.ref_count - self.matched

    @property
    def matched_fraction(self) -> float:
        return self.matched / self.ref_count if self.ref_count else 1.0


def _real_rows(dets: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    keep = labels >= 0
    return dets[keep], labels[keep]


def match_detections(ref_dets: np.ndarray, ref_labels: np.ndarray, dets: np.ndarray, labels: np.ndarray,
                     box_tol: float = 0.05, score_tol: float = 1e-4) -> MatchResult:
    """Greedy one-to-one matching in descending reference score; padding rows (label -1) are ignored.

    A reference detection is matched by an unused produced detection of the same label whose four
    corners are each within box_tol and whose score is within score_tol (the closest one wins).
    """
    ref_dets, ref_labels = _real_rows(ref_dets, ref_labels)
    dets, labels = _real_rows(dets, labels)
    used = np.zeros(len(dets), dtype=bool)
    matched, max_box, max_score, pairs = 0, 0.0, 0.0, []
    for i in np.argsort(-ref_dets[:, 4], kind="stable"):
        box_diff = np.abs(dets[:, :4] - ref_dets[i, :4]).max(axis=1) if len(dets) else np.zeros(0)
        score_diff = np.abs(dets[:, 4] - ref_dets[i, 4])
        ok = (~used) & (labels == ref_labels[i]) & (box_diff <= box_tol) & (score_diff <= score_tol)
        if not ok.any():
            continue
        j = int(np.flatnonzero(ok)[np.argmin(box_diff[ok] / box_tol + score_diff[ok] / score_tol)])
        used[j] = True
        pairs.append((int(i), j))
        matched += 1
        max_box = max(max_box, float(box_diff[j]))
        max_score = max(max_score, float(score_diff[j]))
    return MatchResult(len(ref_dets), matched, int((~used).sum()), max_box, max_score, tuple(pairs))


def ap_ratio(ap_reference: float, ap: float) -> float:
    """AP / AP of the reference, the conversion recipe's figure (1 when both are 0)."""
    if ap_reference > 0:
        return ap / ap_reference
    return 1.0 if ap == ap_reference else float("inf")
