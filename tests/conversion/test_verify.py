"""verify: per-image and total matching, AP of both with their ratio, and the exit code."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from conversion_helpers import network_inputs  # noqa: E402

from model.config import COCO_CLASSES, COCO_CATEGORY_IDS  # noqa: E402
from model.postprocess import to_coco_results  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def verify(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "conversion", "verify", "--threads", "2", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.fixture(scope="module")
def coco_dir(photos, torch_reference, tmp_path_factory) -> Path:
    """A two-image COCO folder whose ground truth is the torch model's confident detections (AP well above 0)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    images, annotations = [], []
    for image_id, photo in enumerate(photos[:2], start=1):
        name = f"{image_id:012d}{photo.suffix}"
        shutil.copy(photo, root / "val2017" / name)
        _, _, (meta,) = network_inputs([photo], 512)
        images.append({"id": image_id, "file_name": name, "width": meta.ori_w, "height": meta.ori_h})
        dets, labels = torch_reference(photo, 512)
        for r in to_coco_results(dets, labels, meta, image_id):
            if r["score"] > 0.3:
                x, y, w, h = r["bbox"]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": r["category_id"],
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
    assert annotations
    categories = [{"id": i, "name": n} for i, n in zip(COCO_CATEGORY_IDS, COCO_CLASSES)]
    data = {"images": images + [{"id": 99, "file_name": "not_verified.jpg", "width": 10, "height": 10}],
            "annotations": annotations, "categories": categories}
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


@pytest.mark.slow
def test_verify_coco_passes_with_ap_ratio(parity_checkpoint, ort_dynamic_512, coco_dir, tmp_path):
    summary = tmp_path / "verify.json"
    proc = verify("--checkpoint", str(parity_checkpoint), "--onnx", str(ort_dynamic_512), "--coco", str(coco_dir),
                  "--limit", "2", "--batch", "2", "--json", str(summary))
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "PASS"
    per_image = [line.split() for line in lines if line.startswith("00000000000")]
    assert [row[0] for row in per_image] == ["000000000001.png", "000000000002.png"]
    assert all(row[1].split("/")[0] == row[1].split("/")[1] and row[2] == "0" for row in per_image)
    result = json.loads(summary.read_text())
    assert result["matched"] == result["reference"] > 0 and result["extra"] == 0 and result["passed"]
    assert result["ap_torch"] > 0.5 and result["ap_ratio"] >= 0.999
    assert f"ratio {100 * result['ap_ratio']:.2f} %" in proc.stdout
    print("\n" + "\n".join(lines[-3:]))


@pytest.mark.slow
def test_verify_fails_when_detections_differ(parity_checkpoint, ort_dynamic_512, photos):
    proc = verify("--checkpoint", str(parity_checkpoint), "--onnx", str(ort_dynamic_512), "--image", str(photos[0]),
                  "--score-tol", "1e-12")
    assert proc.returncode == 1
    assert "AP:" not in proc.stdout  # no annotations, no AP
    assert proc.stdout.strip().splitlines()[-1].startswith("FAIL")


def test_verify_usage_errors(tmp_path, capsys):
    from conversion.__main__ import main
    assert main(["verify", "--checkpoint", "c.pth", "--onnx", str(tmp_path / "none.onnx"), "--images", "."]) == 2
    assert capsys.readouterr().err.strip() == f"error: no such ONNX file ({tmp_path / 'none.onnx'})"
    assert main(["verify", "--checkpoint", "c.pth", "--onnx", "x.onnx"]) == 2
    assert capsys.readouterr().err.strip().endswith("(--coco)")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    assert main(["verify", "--checkpoint", "c.pth", "--onnx", str(onnx_file), "--coco", str(tmp_path)]) == 2
    assert "annotations/instances_*.json" in capsys.readouterr().err
