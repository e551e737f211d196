"""A whole job through the embedded cluster on the exported model gives, image by image, `predict`'s detections."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from conversion_helpers import photo_set  # noqa: E402
from real_processes import run_cli  # noqa: E402

from model.config import COCO_CATEGORY_IDS  # noqa: E402
from evaluation.matching import match_detections  # noqa: E402
from model.preprocess import plan_geometry  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 512
pytestmark = pytest.mark.slow


def as_arrays(results: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """COCO results of one image -> dets [N,5] (x1, y1, x2, y2, score) and class indices [N]."""
    dets = np.array([[x, y, x + w, y + h, r["score"]] for r in results for x, y, w, h in [r["bbox"]]],
                    dtype=np.float64).reshape(-1, 5)
    labels = np.array([COCO_CATEGORY_IDS.index(r["category_id"]) for r in results], dtype=np.int64)
    return dets, labels


def by_image(results: list[dict]) -> dict[int, list[dict]]:
    grouped = defaultdict(list)
    for r in results:
        grouped[r["image_id"]].append(r)
    return grouped


@pytest.fixture(params=["static", "mmdet"])
def size_mode(request) -> str:
    return request.param


def test_onnxruntime_job_gives_predicts_detections(parity_checkpoint, size_mode, request, photos, tmp_path):
    model = request.getfixturevalue("ort_dynamic_512" if size_mode == "static" else "ort_mmdet")
    data = tmp_path / "set"
    ann = photo_set(data, photos[:3])
    images = json.loads(ann.read_text())["images"]

    out = run_cli("submit", "--annotations", str(ann), "--images", str(data / "images"), "--model",
                  str(model), "--batch", "2", "--size-mode", size_mode, "--static-size", str(SIZE),
                  "--devices", "cpu:0", "--warmup", "0", "--run-dir", str(tmp_path / "runs"), timeout_s=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (report_path,) = (tmp_path / "runs").glob("*/report.json")
    report = json.loads(report_path.read_text())
    assert report["params"]["backend"] == "onnxruntime" and report["coverage"]["ok"]
    job = by_image(json.loads(next((tmp_path / "runs").glob("*/results.json")).read_text()))

    predicted = tmp_path / "predict.json"
    proc = subprocess.run([sys.executable, "-m", "conversion", "predict", "--checkpoint", str(parity_checkpoint),
                           *[a for im in images for a in ("--image", str(data / "images" / im["file_name"]))],
                           "--size-mode", size_mode, "--input-size", str(SIZE), "--out", str(predicted)],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reference = by_image(json.loads(predicted.read_text()))

    for im in images:
        meta = plan_geometry(im["height"], im["width"], size_mode, static_size=SIZE)
        # 0.05 px on the network input is 0.05 / scale in the original image
        tol = 0.05 / min(meta.w_scale, meta.h_scale)
        ref, got = as_arrays(reference[im["id"]]), as_arrays(job[im["id"]])
        result = match_detections(ref[0], ref[1], got[0], got[1], box_tol=tol)
        assert result.ref_count > 0 and (result.matched, result.extra) == (result.ref_count, 0), (im, result)
        print(f"\n{im['file_name']}: {result.matched}/{result.ref_count} matched, max box diff "
              f"{result.max_box_diff:.2e} px, max score diff {result.max_score_diff:.2e}")
