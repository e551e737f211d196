"""`python -m orchestrator selftest`: the generated set through real workers on a private Redis, AP 1.000."""
from __future__ import annotations

import re

import pytest

from real_processes import run_cli


@pytest.mark.slow
def test_selftest_gives_ap_one_at_batch_1_4_8_in_both_size_modes(tmp_path):
    out = run_cli("selftest", "--run-dir", str(tmp_path), timeout_s=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = re.findall(r"size mode (\w+)\s+batch (\d+): box AP (\d\.\d{3}) .*every image once", out.stdout)
    assert sorted((m, int(b)) for m, b, _ in lines) == sorted(
        (m, b) for m in ("mmdet", "static") for b in (1, 4, 8))
    assert {ap for _, _, ap in lines} == {"1.000"}
    assert "selftest passed: 6 jobs" in out.stdout
    assert "gray/RGBA/CMYK" in out.stderr
    assert not list(tmp_path.glob("selftest-*/store"))  # the tensor store of the run is cleaned up
    assert len(list(tmp_path.glob("selftest-*/*/report.json"))) == 6
