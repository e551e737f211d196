"""`compare` of a torch job against an onnxruntime job (parity checkpoint and its export) gives the matched
fraction `conversion verify` gives on the same images."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")

from real_processes import run_cli  # noqa: E402

from conversion_helpers import photo_set  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SIZE = 512
pytestmark = pytest.mark.slow


def test_compare_torch_with_onnxruntime_gives_verifys_matched_fraction(parity_checkpoint, ort_dynamic_512, photos,
                                                                       tmp_path):
    ann = photo_set(tmp_path / "set", photos[:3])
    runs = tmp_path / "runs"
    common = ["--annotations", str(ann), "--images", str(tmp_path / "set" / "images"), "--batch", "1",
              "--static-size", str(SIZE), "--devices", "cpu:0", "--warmup", "0", "--run-dir", str(runs)]
    out = run_cli("submit", "--model", str(parity_checkpoint), *common, timeout_s=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (torch_run,) = [p.parent for p in runs.glob("*/report.json")]
    out = run_cli("submit", "--model", str(ort_dynamic_512), "--compare-with", torch_run.name, *common, timeout_s=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (compare_json,) = runs.glob("compare-*/compare.json")
    c = json.loads(compare_json.read_text())
    assert c["a"]["backend"] == "torch" and c["b"]["backend"] == "onnxruntime"

    verified = tmp_path / "verify.json"
    proc = subprocess.run([sys.executable, "-m", "conversion", "verify", "--checkpoint", str(parity_checkpoint),
                           "--onnx", str(ort_dynamic_512), "--images", str(tmp_path / "set" / "images"),
                           "--json", str(verified)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    v = json.loads(verified.read_text())
    t = c["totals"]
    print(f"\ncompare: {t['matched']}/{t['a']} extra {t['extra']}; verify: {v['matched']}/{v['reference']} "
          f"extra {v['extra']}")
    assert (t["matched"], t["a"], t["extra"]) == (v["matched"], v["reference"], v["extra"])
    assert t["matched_fraction"] == v["match_rate"]
