"""Batch sweeps on the embedded cluster (preprocessing once, AP at every batch size) and the report files."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from contract_onnx import write_tiny_onnx
from real_processes import run_cli
from orchestrator.__main__ import main

SIZES = [(64, 48), (48, 64), (80, 40)]
N_IMAGES = 13  # batch 4 leaves a last batch of one image, padded to four rows by the static export
NUMBER = re.compile(r"^\(?(-?\d+(?:\.\d+)?)\)?$")


def write_car_set(folder: Path):
    """Cars where the tiny ONNX model answers (the image's top-left quarter) on odd images, elsewhere on even ones."""
    (folder / "images").mkdir(parents=True)
    images, anns = [], []
    for i in range(N_IMAGES):
        w, h = SIZES[i % len(SIZES)]
        image_id = 500 + 7 * i
        cv2.imwrite(str(folder / "images" / f"{image_id}.png"), np.full((h, w, 3), 10 * i, dtype=np.uint8))
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": w, "height": h})
        box = [0, 0, w / 2, h / 2] if i % 2 else [w / 2, h / 2, w / 3, h / 3]
        anns.append({"id": i + 1, "image_id": image_id, "category_id": 3, "bbox": box, "area": box[2] * box[3],
                     "iscrowd": 0})
    ann = folder / "annotations.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 3, "name": "car"}]}))
    return ann, folder / "images"


def md_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows of cells) of every markdown table."""
    tables, header = [], None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
            tables.append((header, []))
        elif not set("".join(cells)) <= set("-"):
            tables[-1][1].append(cells)
    return tables



def md_numbers(text: str) -> list[tuple[str, str]]:
    """(column header, cell) of every numeric cell of every markdown table."""
    return [(h, c) for header, rows in md_tables(text) for row in rows for h, c in zip(header, row) if NUMBER.match(c)]

def report_fields(report: dict) -> dict[tuple[str, ...], tuple[list, dict]]:
    """Each table of report.md by its header: (the report.json rows it shows, column -> (field of a row, format))."""
    ap, pre = report["ap"], report.get("preprocessing") or {}
    analysis = report.get("analysis") or {}
    tide, gallery = analysis.get("tide") or {"counts": {}, "dAP": {}}, analysis.get("gallery") or {"images": []}
    sweep_columns = {"batch": ("batch", "d"), "box AP": ("ap", ".3f"), "device FPS": ("device_fps", ".2f"),
                     "end-to-end FPS": ("e2e_fps", ".2f"), "p50 ms": ("p50_ms", ".1f"), "p99 ms": ("p99_ms", ".1f"),
                     "images": ("images", "d"), "preprocessed": ("preprocessed", "d")}
    return {
        tuple(ap["stats"]): ([ap["stats"]], {name: (name, ".3f") for name in ap["stats"]}),
        ("class", "AP"): ([{"class": k, "AP": v} for k, v in ap["per_class"].items()], {"AP": ("AP", ".3f")}),
        ("device", "images", "batches", "shards", "device FPS", "p50 ms", "p90 ms", "p99 ms", "valid"): (
            report["fps_table"], {"images": ("images", "d"), "batches": ("batches", "d"), "shards": ("shards", "d"),
                                  "device FPS": ("device_fps", ".2f"), "p50 ms": ("p50_ms", ".1f"),
                                  "p90 ms": ("p90_ms", ".1f"), "p99 ms": ("p99_ms", ".1f")}),
        ("batch", "device", "box AP", "device FPS", "end-to-end FPS", "p50 ms", "p99 ms", "images", "preprocessed",
         "valid"): (report.get("sweep", {}).get("rows", []), sweep_columns),
        ("device", "pid", "idle", "how"): (report["attestation"], {"pid": ("pid", "d")}),
        ("where", "images preprocessed", "read from the store"): (
            [{"n": pre.get("pool_preprocessed"), "hits": pre.get("pool_store_hits")},
             {"n": pre.get("device_preprocessed"), "hits": pre.get("device_store_hits")}],
            {"images preprocessed": ("n", "d"), "read from the store": ("hits", "d")}),
        ("item", "value"): ([], {}),
        ("device", "pid", "identity", "backend", "onnxruntime", "torch", "CANN", "NPU driver"): (
            report["manifest"].get("hosts", []), {"pid": ("pid", "d")}),
        ("device", "verdict", "what fell short"): ([], {}),
        ("error type", "what", "errors", "dAP"): (
            [{"errors": tide["counts"][k], "dAP": tide["dAP"][k]} for k in tide["dAP"]],
            {"errors": ("errors", "d"), "dAP": ("dAP", ".2f")}),
        ("image id", "file", "false positives", "misses"): (
            gallery["images"], {"image id": ("image_id", "d"), "false positives": ("false_positives", "d"),
                                "misses": ("misses", "d")}),
    }


def assert_each_table_cell_is_its_field(md: str, report: dict) -> int:
    """Every numeric cell of report.md's tables is its own row's field of report.json, formatted; returns how many."""
    fields, checked = report_fields(report), 0
    for header, rows in md_tables(md):
        assert tuple(header) in fields, f"a table report_fields does not know: {header}"
        source, columns = fields[tuple(header)]
        if not columns:
            assert not any(NUMBER.match(c) for row in rows for c in row[1:]), (header, rows)
            continue
        assert len(rows) == len(source), (header, len(rows), len(source))
        for row, record in zip(rows, source):
            for column, cell in zip(header, row):
                if column not in columns:
                    assert not NUMBER.match(cell) or column in ("device", "class"), (header, column, cell)
                    continue
                field, fmt = columns[column]
                value = record[field]
                if column == "device FPS" and value is None and "fps_with_warmup" in record:  # warm-up included
                    value, cell = record["fps_with_warmup"], cell.strip("()")
                expected = "-" if value is None else format(value, fmt)
                assert cell == expected, f"{column} = {cell} in report.md, {field} = {value} in report.json"
                checked += 1
    return checked


def test_batch_list_errors_are_one_line(capsys):
    for value, fragment in (("1,x", "--batch takes a batch size or a list"), ("4,0", "must be at least 1"),
                            ("4,4", "listed twice")):
        assert main(["submit", "--batch", value]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err and err.endswith("(--batch)"), err


@pytest.mark.slow
def test_two_batch_sweep_preprocesses_once_and_matches_a_single_job(tmp_path, shared_cluster):
    ann, img = write_car_set(tmp_path / "set")
    for b in (1, 4):
        write_tiny_onnx(tmp_path / f"tiny_bs{b}.onnx", fixed_batch=b)  # static exports, one per batch size
    runs = tmp_path / "runs"
    checkpoint = tmp_path / "dcn.pth"
    checkpoint.write_bytes(b"the checkpoint the exports came from")
    out = run_cli("submit", "--annotations", str(ann), "--images", str(img),
                  "--model", str(tmp_path / "tiny_bs{batch}.onnx"),
                  "--batch", "1,4", "--devices", "cpu:0", "--static-size", "320", "--warmup", "1",
                  "--checkpoint", str(checkpoint), "--run-dir", str(runs), timeout_s=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_path,) = runs.glob("*/sweep.json")
    sweep = json.loads(sweep_path.read_text())
    assert sweep["batches"] == [1, 4] and {r["batch"] for r in sweep["rows"]} == {1, 4}
    first, second = sweep["preprocessing"]
    assert first["preprocessed"] == N_IMAGES and first["pool_tasks"] > 0
    assert second["preprocessed"] == 0 and second["pool_tasks"] == 0
    assert second["pool_store_hits"] + second["device_store_hits"] == N_IMAGES
    assert sweep["preprocessed_once"] and "preprocessing ran once" in out.stdout
    assert "batch sweep" in out.stdout and (sweep_path.parent / "plots" / "fps_vs_batch.png").is_file()

    single = run_cli("submit", "--broker", shared_cluster["url"], "--annotations", str(ann), "--images", str(img),
                     "--model", str(write_tiny_onnx(tmp_path / "tiny_dynamic.onnx")), "--batch", "4",
                     "--static-size", "320", "--run-dir", str(tmp_path / "single"), timeout_s=240)
    assert single.returncode == 0, single.stderr[-2000:]
    (single_path,) = (tmp_path / "single").glob("*/report.json")
    ap = json.loads(single_path.read_text())["ap"]["stats"]["AP"]
    assert 0.0 < ap < 1.0
    assert sweep["ap_by_batch"] == {"1": ap, "4": ap}
    for job in sweep["jobs"]:
        report = json.loads((runs / job / "report.json").read_text())
        assert report["params"]["sweep"] == sweep["id"] and report["coverage"]["ok"]
        model = Path(report["params"]["model"])
        assert model.name == f"tiny_bs{report['params']['batch']}.onnx"
        assert report["manifest"]["model_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
        assert report["manifest"]["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        (host,) = report["manifest"]["hosts"]
        assert host["device"].endswith("/cpu:0") and host["onnxruntime"]
        assert host["backend"]["backend"] == "onnxruntime"
    check_report_files(runs / sweep["jobs"][1], runs)


def check_report_files(job_dir: Path, runs: Path) -> None:
    """The PNGs decode; report.json holds every number of report.md's tables; `report JOB` rebuilds them."""
    report = json.loads((job_dir / "report.json").read_text())
    assert set(report["plots"]) == {"fps_vs_batch", "timeline", "latency_histogram"}
    for rel in report["plots"].values():
        image = cv2.imread(str(job_dir / rel))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0
    md = (job_dir / "report.md").read_text()
    assert assert_each_table_cell_is_its_field(md, report) > 40
    for section in ("Box AP", "Per class", "Throughput", "Batch sweep", "Validity", "Idle attestation",
                    "Preprocessing", "Reproducibility manifest", "annotation sha256", "preprocessing fingerprint"):
        assert section in md, section
    assert report["validity"]["overall"]["valid"] is False and report["validity"]["overall"]["short"]
    assert "needs 20" in md  # the rule that fell short is named
    assert {r["batch"] for r in report["sweep"]["rows"]} == {1, 4}

    for png in job_dir.glob("plots/*.png"):
        png.unlink()
    (job_dir / "report.md").unlink()
    again = run_cli("report", job_dir.name, "--run-dir", str(runs))
    assert again.returncode == 0, again.stderr
    assert (job_dir / "report.md").read_text() == md
    assert all((job_dir / rel).is_file() for rel in report["plots"].values())
    sweep_again = run_cli("report", report["sweep"]["id"], "--run-dir", str(runs))
    assert sweep_again.returncode == 0 and "preprocessing ran once" in sweep_again.stdout
