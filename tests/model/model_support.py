"""Expensive model resources made once per test process: the oracle's checkpoint and forward passes,
a random checkpoint. Test modules wrap these in session fixtures of their own.

(Not a conftest.py: a second conftest module would shadow `from conftest import ...` in other tests.)
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ORACLE = REPO / "tests" / "fixtures" / "oracle"  # mmdetection 2.8.0's outputs, in the repository (its README)
IMAGES = ("astronaut", "chelsea", "coffee", "camera", "logo")
MODES = ("mmdet", "static")
CASES = [(name, mode) for mode in MODES for name in IMAGES]
INTERMEDIATE_CASES = [("astronaut", "mmdet"), ("coffee", "mmdet"), ("astronaut", "static"), ("coffee", "static")]
# mmdet's feature slices in those cases (digests.json): C3 channels 0..7, P2 channels 0..3, P3-P6 channels 0..7
FEATURE_SLICES = ("backbone_c3_c0_7", "fpn_p2_c0_3", "fpn_p3_c0_7", "fpn_p4_c0_7", "fpn_p5_c0_7", "fpn_p6_c0_7")

# The oracle was computed where oneDNN's convolutions and MKL's GEMM (torchvision's deform_conv2d)
# ran their AVX2 kernels. On an AVX-512/AMX CPU they pick other kernels whose float32 round-off
# differs by ~1e-6 relative at C2; the conditioned random DCN weights amplify that about tenfold
# per stage (C5: 7e-4, box-head scores: up to 4e-3), far beyond the comparison's 1e-4. These
# variables select the AVX2 kernels, so the comparison runs in the oracle's arithmetic. They must
# be set before the libraries start, hence a separate process.
ORACLE_ARITHMETIC = {"DNNL_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2,STRICT", "OMP_NUM_THREADS": "2"}

# Summary numbers of the hashed arrays (digests.json) where the kernels are not pinned, as fractions of the
# array's std. Measured on an AVX-512/AMX CPU without ORACLE_ARITHMETIC, worst over C3 and P2-P6 of the four
# cases: mean, std, abs_mean and the moments within 1.4e-5, min and max within 2.5e-3.
SUMMARY_TOLERANCE = {"mean": 1e-4, "std": 1e-4, "abs_mean": 1e-4, "x_moment": 1e-4, "y_moment": 1e-4,
                     "min": 1e-2, "max": 1e-2}

_made: dict[str, object] = {}


def oracle_image(name: str) -> Path:
    return next((ORACLE / "images").glob(f"{name}.*"))


def oracle_env() -> dict:
    return {**os.environ, **ORACLE_ARITHMETIC, "PYTHONPATH": str(REPO)}


def load_reference(name: str, mode: str) -> dict[str, np.ndarray]:
    with np.load(ORACLE / f"{name}_{mode}.npz") as ref:
        return {k: ref[k] for k in ref.files}


def load_digests(name: str, mode: str) -> dict[str, dict]:
    """sha256 and summary numbers of mmdet's large arrays (network input, C3, P2-P6) for one case."""
    return json.loads((ORACLE / "digests.json").read_text())[f"{name}_{mode}"]


def digest(array: np.ndarray) -> dict:
    """Shape, sha256 of the float32 C-order bytes and summary numbers (float64) of an [N, C, H, W] array; the
    moments weight each value by its column or row (0 to 1), so a shifted or transposed map shows."""
    a = np.ascontiguousarray(array, dtype=np.float32)
    wide = a.astype(np.float64)
    h, w = a.shape[-2:]
    return {"shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest(), "mean": wide.mean(),
            "std": wide.std(), "abs_mean": np.abs(wide).mean(), "min": wide.min(), "max": wide.max(),
            "x_moment": (wide * np.linspace(0, 1, w)).mean(),
            "y_moment": (wide * np.linspace(0, 1, h)[:, None]).mean()}


def digest_mismatches(array: np.ndarray, expected: dict, bit_exact: bool) -> list[str]:
    """What differs between our array and mmdet's digest: the shape, the sha256 (when `bit_exact`), each
    summary number beyond SUMMARY_TOLERANCE x std. Empty when they agree."""
    ours = digest(array)
    if ours["shape"] != expected["shape"]:
        return [f"shape {ours['shape']} != {expected['shape']}"]
    diff = {k: abs(ours[k] - expected[k]) / expected["std"] for k in SUMMARY_TOLERANCE}
    found = [f"{k} {ours[k]:.9g} != {expected[k]:.9g} ({diff[k]:.2g} std)"
             for k, tol in SUMMARY_TOLERANCE.items() if diff[k] > tol]
    if bit_exact and ours["sha256"] != expected["sha256"]:
        found.append(f"sha256 differs (largest summary diff {max(diff.values()):.2g} std)")
    return found


def _once(key: str, make):
    if key not in _made:
        _made[key] = make()
    return _made[key]


def oracle_checkpoint(tmp_path_factory, style: str = "new") -> Path:
    """The oracle's conditioned checkpoint, regenerated bit-identically from its seed and params.npz (the
    generator refuses to write it unless the state dict's sha256 equals checkpoint.sha256)."""
    def make():
        path = tmp_path_factory.mktemp("oracle") / f"oracle_dcn_{style}.pth"
        proc = subprocess.run([sys.executable, str(ORACLE / "make_checkpoint.py"), "--out", str(path),
                               "--offset-key-style", style], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return path
    return _once(f"oracle_checkpoint_{style}", make)


def oracle_run(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Our outputs for all 10 oracle cases: {'astronaut_mmdet': {'dets': ..., 'proposals': ...}, ...}."""
    checkpoint = oracle_checkpoint(tmp_path_factory)

    def make():
        out = tmp_path_factory.mktemp("oracle_run") / "run.npz"
        proc = subprocess.run([sys.executable, str(REPO / "tests" / "model" / "oracle_runner.py"),
                               "--checkpoint", str(checkpoint), "--oracle", str(ORACLE), "--out", str(out)],
                              env=oracle_env(), capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs: dict[str, dict[str, np.ndarray]] = {}
        with np.load(out) as saved:
            for key in saved.files:
                case, field = key.split("/")
                runs.setdefault(case, {})[field] = saved[key]
        return runs
    return _once("oracle_run", make)


def random_checkpoint(tmp_path_factory) -> Path:
    """A random checkpoint written by the product's own command (`make-checkpoint --seed 0`)."""
    def make():
        from conversion.__main__ import main
        path = tmp_path_factory.mktemp("random") / "random_dcn.pth"
        assert main(["make-checkpoint", "--out", str(path), "--seed", "0"]) == 0
        return path
    return _once("random_checkpoint", make)


def random_detector(tmp_path_factory):
    def make():
        from model.checkpoint import load_detector
        return load_detector(random_checkpoint(tmp_path_factory))
    return _once("random_detector", make)
