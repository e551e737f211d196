"""`python -m conversion predict` end to end against mmdet's own results; its one-line errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import model_support
from conversion.__main__ import main
from model.config import COCO_CATEGORY_IDS
from evaluation.matching import match_detections
from model_support import REPO, load_reference, oracle_env, oracle_image


@pytest.mark.slow
def test_predict_writes_coco_results_equal_to_mmdet(tmp_path, tmp_path_factory):
    """mmdet mode, original-image pixels (mmdet's rescale=True), image_id from the numeric stem."""
    checkpoint = model_support.oracle_checkpoint(tmp_path_factory)
    image = tmp_path / "000000000042.png"
    shutil.copy(oracle_image("astronaut"), image)
    out = tmp_path / "dets.json"
    proc = subprocess.run([sys.executable, "-m", "conversion", "predict", "--checkpoint", str(checkpoint),
                           "--image", str(image), "--size-mode", "mmdet", "--out", str(out)],
                          cwd=REPO, env=oracle_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    ref = load_reference("astronaut", "mmdet")
    assert len(results) == len(ref["labels_rescaled"]) and {r["image_id"] for r in results} == {42}
    label_of = {cat: label for label, cat in enumerate(COCO_CATEGORY_IDS)}
    dets = np.array([[x, y, x + w, y + h, r["score"]] for r in results for x, y, w, h in [r["bbox"]]])
    labels = np.array([label_of[r["category_id"]] for r in results])
    m = match_detections(ref["dets_rescaled"], ref["labels_rescaled"], dets, labels)
    assert (m.matched, m.extra) == (m.ref_count, 0), m


def test_image_id_is_the_stem_or_the_position():
    from conversion.predict import image_id_for
    assert image_id_for("/data/val2017/000000000139.jpg", 5) == 139
    assert image_id_for("cat.jpg", 3) == 3


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


def test_predict_refuses_a_wrong_checkpoint_in_one_line(tmp_path, capsys):
    bad = tmp_path / "model.pth"
    bad.write_text(json.dumps({"not": "a checkpoint"}))
    img = tmp_path / "x.png"
    import cv2
    cv2.imwrite(str(img), np.full((40, 60, 3), 90, np.uint8))
    code = main(["predict", "--checkpoint", str(bad), "--image", str(img), "--out", str(tmp_path / "o.json")])
    assert code == 2 and str(bad) in error_line(capsys)
    assert not (tmp_path / "o.json").exists()


def test_predict_refuses_a_missing_image_before_loading(tmp_path, capsys):
    code = main(["predict", "--checkpoint", str(tmp_path / "never-read.pth"), "--image", str(tmp_path / "no.jpg"),
                 "--out", str(tmp_path / "o.json")])
    assert code == 2 and "no.jpg" in error_line(capsys)


def test_predict_refuses_a_bad_input_size(tmp_path, capsys):
    code = main(["predict", "--checkpoint", "m.pth", "--image", "x.jpg", "--size-mode", "static",
                 "--input-size", "1000", "--out", str(tmp_path / "o.json")])
    assert code == 2 and "--input-size" in error_line(capsys)


def test_make_checkpoint_refuses_a_missing_folder(tmp_path, capsys):
    assert main(["make-checkpoint", "--out", str(tmp_path / "no" / "r.pth")]) == 2
    assert "r.pth" in error_line(capsys)
