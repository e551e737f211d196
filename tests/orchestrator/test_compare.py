"""`compare` on real run folders (a job of the embedded cluster), report.html and compare.html in headless Chromium."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from browser import artifacts_dir, render
from real_processes import run_cli
from test_sweep_report import md_numbers

pytestmark = pytest.mark.slow
BACKEND = "sim:1ms,load=none,answers=detector"


@pytest.fixture(scope="module")
def run(selftest_set, tmp_path_factory) -> Path:
    """One finished job: detector-like answers on the generated set (errors of every kind for the analysis)."""
    ann, images = selftest_set
    runs = tmp_path_factory.mktemp("runs")
    out = run_cli("submit", "--annotations", str(ann), "--images", str(images), "--backend", BACKEND,
                  "--batch", "4", "--static-size", "256", "--devices", "cpu:0", "--warmup", "0",
                  "--run-dir", str(runs), timeout_s=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (report,) = runs.glob("*/report.json")
    return report.parent


def not_blank(png: Path) -> None:
    with Image.open(png) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 20, f"{png} is (nearly) one colour"


def assert_renders(page: Path, markdown: Path, name: str) -> str:
    """The page in headless Chromium: no console message, a screenshot with something on it, every number of
    the markdown's tables in its text; the page fetches nothing (every image is inlined)."""
    html = page.read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert all(s.startswith("data:") for s in sources), [s[:40] for s in sources if not s.startswith("data:")]
    console: list[str] = []
    shot = artifacts_dir() / name
    text = render(page.as_uri(), shot, wait_ms=2000, size=(1280, 2000), console=console)
    assert console == []
    not_blank(shot)
    shutil.copy(shot, page.parent / f"{page.stem}.screenshot.png")  # kept in the run folder too
    cells = md_numbers(markdown.read_text())
    assert cells
    missing = [(h, c) for h, c in cells if c not in text]
    assert not missing, missing[:10]
    return text


def test_report_html_has_the_error_analysis_and_renders(run):
    report = json.loads((run / "report.json").read_text())
    a = report["analysis"]
    assert set(a["tide"]["dAP"]) == {"Cls", "Loc", "Both", "Dupl", "Bkg", "Miss"}
    # TIDE's AP50, averaged over the classes with ground truth, is COCOeval's AP50 on this set
    assert a["tide"]["ap50"] == pytest.approx(100 * report["ap"]["stats"]["AP50"], abs=0.5)
    assert a["gallery"]["images"] and len(a["pr"]["iou50"]) == 101
    for e in a["gallery"]["images"]:
        with Image.open(run / e["png"]) as im:
            im.load()
    assert "data:image/png;base64," in (run / "report.html").read_text()
    text = assert_renders(run / "report.html", run / "report.md", "report_html.png")
    assert "Error analysis" in text and "Images with most false positives and misses" in text


def test_a_run_against_itself(run, tmp_path):
    out = run_cli("compare", str(run), run.name, "--run-dir", str(run.parent), "--out", str(tmp_path / "self"))
    assert out.returncode == 0, out.stderr
    c = json.loads((tmp_path / "self" / "compare.json").read_text())
    assert c["totals"]["matched"] == c["totals"]["a"] > 0 and c["totals"]["extra"] == 0
    assert c["differing_images"] == 0 and c["verdicts"]["recipe"]["ratio"] == 1.0
    assert "recipe: PASS 100.00 %" in out.stdout and "strict: PASS 100.00 %" in out.stdout
    assert_renders(tmp_path / "self" / "compare.html", tmp_path / "self" / "compare.md", "compare_html.png")


def test_known_differences_are_found(run, tmp_path):
    """B is A with one detection dropped, one box moved 3 px and one score changed by 1e-3."""
    other = tmp_path / "other"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("redis", "logs", "gallery"))
    results = json.loads((run / "results.json").read_text())
    firsts = {}
    for k, r in enumerate(results):
        firsts.setdefault(r["image_id"], k)
    dropped, moved, rescored = sorted(firsts.values())[:3]
    results[moved]["bbox"][0] += 3.0
    results[rescored]["score"] += 1e-3
    del results[dropped]
    (other / "results.json").write_text(json.dumps(results))
    out = run_cli("compare", str(run), str(other), "--out", str(tmp_path / "cmp"))
    assert out.returncode == 1, out.stderr  # the strict verdict fails
    c = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    t = c["totals"]
    assert (t["missing"], t["extra"], t["matched"]) == (3, 2, t["a"] - 3)
    assert c["differing_images"] == 3 and len(c["differing"]) == 3
    for row in c["differing"]:
        with Image.open(tmp_path / "cmp" / row["png"]) as im:
            im.load()


def test_bad_input_is_one_line(run, tmp_path):
    running = tmp_path / "running"
    running.mkdir()
    (running / "cluster.json").write_text("{}")
    other = tmp_path / "other_annotation"
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("redis", "logs", "gallery", "plots"))
    report = json.loads((other / "report.json").read_text())
    report["manifest"]["annotation_sha256"] = "0" * 64
    report["params"]["annotation"] = "/elsewhere/instances.json"
    (other / "report.json").write_text(json.dumps(report))
    for args, fragment in (([str(run), str(tmp_path / "nowhere")], "no run folder"),
                           ([str(run), str(running)], "has no report yet"),
                           ([str(run), str(other)], "different annotation files")):
        out = run_cli("compare", *args, "--run-dir", str(tmp_path))
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr
