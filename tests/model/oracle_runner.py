"""Run the model on every oracle case, stage by stage, and save what the tests compare (one npz).

    python tests/model/oracle_runner.py --checkpoint oracle.pth --out run.npz

A separate process, so the oracle's arithmetic can be chosen before torch starts (see
model_support.ORACLE_ARITHMETIC) and the forward passes are shared by all oracle tests. Keys are
`{image}_{mode}/{field}`, and `run/kernels_pinned`: whether ORACLE_ARITHMETIC selects the oracle's kernels here.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from model.checkpoint import load_detector  # noqa: E402
from model.preprocess import clip_sizes, load_image, preprocess  # noqa: E402
from model_support import IMAGES, INTERMEDIATE_CASES, MODES, ORACLE, ORACLE_ARITHMETIC  # noqa: E402


def kernels_pinned() -> bool:
    """ORACLE_ARITHMETIC is in effect and can select the AVX2 kernels: an x86 CPU with AVX2 (and FMA)."""
    in_effect = all(os.environ.get(k) == v for k, v in ORACLE_ARITHMETIC.items() if k != "OMP_NUM_THREADS")
    return in_effect and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def run_case(detector, oracle: Path, name: str, mode: str) -> dict[str, np.ndarray]:
    ref = np.load(oracle / f"{name}_{mode}.npz")
    image = load_image(next((oracle / "images").glob(f"{name}.*")))
    x, meta = preprocess(image, mode)
    batch = np.ascontiguousarray(x[None])
    out = {"input_sha256": np.array(hashlib.sha256(batch.tobytes()).hexdigest()),
           "input_shape": np.array(batch.shape)}
    images, clip = torch.from_numpy(batch), torch.from_numpy(clip_sizes([meta]))
    with torch.inference_mode():
        feats_c = detector.backbone(images)
        feats = detector.neck(feats_c)
        proposals, scores, valid = detector.rpn_head(feats, clip)
        dets, labels = detector.roi_head(feats, proposals, valid, clip)
        keep = valid[0]
        out["proposals"] = torch.cat([proposals[0], scores[0, :, None]], dim=1)[keep].numpy()
        out["dets"], out["labels"] = dets[0].numpy(), labels[0].numpy()
        if (name, mode) in INTERMEDIATE_CASES:
            out["backbone_c3_c0_7"] = feats_c[1][:, :8].numpy()
            out["fpn_p2_c0_3"] = feats[0][:, :4].numpy()
            for level in range(3, 7):
                out[f"fpn_p{level}_c0_7"] = feats[level - 2][:, :8].numpy()
            # The box head on the oracle's own proposals: compared without the RPN in between.
            ref_props = torch.from_numpy(np.ascontiguousarray(ref["proposals"][None, :, :4]))
            boxes, head_scores = detector.roi_head.classify(feats, ref_props, clip)
            out["head_scores"] = head_scores[0].numpy()
            cls = head_scores[0, :, :-1]
            cand = (cls > detector.cfg.score_thr).nonzero()  # (row, class), proposal-major like mmdet
            out["cand_index"] = cand.numpy().astype(np.int32)
            out["cand_boxes"] = boxes[0][cand[:, 0], cand[:, 1]].numpy()
            out["cand_scores"] = cls[cand[:, 0], cand[:, 1]].numpy()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--oracle", default=str(ORACLE))
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = load_detector(args.checkpoint)
    saved = {"run/kernels_pinned": np.array(kernels_pinned())}
    for mode in MODES:
        for name in IMAGES:
            for field, value in run_case(detector, Path(args.oracle), name, mode).items():
                saved[f"{name}_{mode}/{field}"] = value
            print(f"{name} {mode} done", file=sys.stderr, flush=True)
    np.savez(args.out, **saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
