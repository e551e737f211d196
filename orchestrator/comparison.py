"""Two finished runs on the same images, A the reference: detections matched image by image with the
parity rules of `conversion verify`, the recipe's and the strict verdicts, AP and FPS side by side.

Tolerances are in pixels of the network input, as verify's: an image's corner tolerance in its own
pixels is box_tol / its scale on A's canvas (size mode and S of run A).
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from commandline import UsageError
from evaluation.coco_eval import STAT_NAMES
from evaluation.matching import ap_ratio, match_detections
from model.preprocess import plan_geometry

RECIPE_MIN_RATIO = 0.99
STRICT_MIN_MATCHED = 0.999
RECIPE_RULE = "AP(B) / AP(A) >= 99 % (the Ascend conversion recipe's acceptance)"
STRICT_RULE = ("at least 99.9 % of A's detections matched by one of B's: same class, every corner within the box "
               "tolerance, score within the score tolerance")


@dataclass
class Run:
    """A finished run folder: its report.json, its COCO results grouped by image."""

    folder: Path
    report: dict
    results: dict[int, list[dict]]

    @property
    def name(self) -> str:
        return self.report["job"]


def find_run(arg: str, run_root: Path) -> Path:
    """A run folder given as a path or a job id under the run root; one-line error when there is none."""
    for folder in (Path(arg), run_root / arg):
        if folder.is_dir():
            return folder
    raise UsageError(f"no run folder {arg}, nor a job of that id under {run_root} ({arg})")


def load_run(arg: str, run_root: Path) -> Run:
    """The run's report and results; a run without a report (still running, or stopped) is refused."""
    folder = find_run(arg, run_root)
    path = folder / "report.json"
    if not path.is_file():
        raise UsageError(f"run {folder.name} has no report yet: still running, or stopped before its end "
                         f"(`resume` finishes it) ({folder})")
    report = json.loads(path.read_text())
    if (folder / "sweep.json").is_file() or "coverage" not in report:
        raise UsageError(f"{folder.name} is a batch sweep: compare one of its jobs ({folder})")
    results_path = folder / "results.json"
    if not results_path.is_file():
        raise UsageError(f"run {folder.name} has no results.json ({results_path})")
    grouped: dict[int, list[dict]] = defaultdict(list)
    for r in json.loads(results_path.read_text()):
        grouped[int(r["image_id"])].append(r)
    return Run(folder, report, dict(grouped))


def _annotation_key(report: dict) -> str:
    m = report.get("manifest") or {}
    return m.get("annotation_sha256") or str(Path(report["params"]["annotation"]).resolve())


def check_comparable(a: Run, b: Run) -> None:
    """One line when the two runs did not evaluate the same annotation file and the same images."""
    if _annotation_key(a.report) != _annotation_key(b.report):
        raise UsageError(f"the runs evaluated different annotation files: {a.report['params']['annotation']} and "
                         f"{b.report['params']['annotation']} ({b.folder})")
    left = {int(i) for i in a.report["coverage"]["missing"]} | {int(i) for i in a.report["coverage"]["unreadable"]}
    right = {int(i) for i in b.report["coverage"]["missing"]} | {int(i) for i in b.report["coverage"]["unreadable"]}
    if left != right or a.report["coverage"]["expected"] != b.report["coverage"]["expected"]:
        raise UsageError(f"the runs answered different image sets: {len(left ^ right)} image(s) missing or unreadable "
                         f"in one run only ({b.folder})")


def as_arrays(results: list[dict], class_ids: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """COCO results of one image -> dets [N,5] (x1, y1, x2, y2, score) and class indices [N]."""
    dets = np.array([[x, y, x + w, y + h, r["score"]] for r in results for x, y, w, h in [r["bbox"]]],
                    dtype=np.float64).reshape(-1, 5)
    return dets, np.array([class_ids[r["category_id"]] for r in results], dtype=np.int64)


def match_images(a: Run, b: Run, images: list[dict], box_tol: float, score_tol: float) -> list[dict]:
    """Per image of the annotation file: A's detections, matched, missing (A's without a partner), extra (B's)."""
    params = a.report["params"]
    class_ids = {c: k for k, c in enumerate(sorted({r["category_id"] for rs in (*a.results.values(),
                                                                                 *b.results.values()) for r in rs}))}
    rows = []
    for im in images:
        image_id = int(im["id"])
        ra, rb = a.results.get(image_id, []), b.results.get(image_id, [])
        if not ra and not rb:
            continue
        meta = plan_geometry(int(im["height"]), int(im["width"]), params["size_mode"],
                             static_size=params["static_size"])
        tol = box_tol / min(meta.w_scale, meta.h_scale)
        (da, la), (db, lb) = as_arrays(ra, class_ids), as_arrays(rb, class_ids)
        m = match_detections(da, la, db, lb, box_tol=tol, score_tol=score_tol)
        paired_a = {i for i, _ in m.pairs}
        paired_b = {j for _, j in m.pairs}
        rows.append({"image_id": image_id, "file_name": im.get("file_name", ""), "a": m.ref_count, "b": len(rb),
                     "matched": m.matched, "missing": m.unmatched, "extra": m.extra,
                     "max_score_diff": m.max_score_diff, "max_box_diff": m.max_box_diff,
                     "unmatched_a": [i for i in range(len(ra)) if i not in paired_a],
                     "unmatched_b": [j for j in range(len(rb)) if j not in paired_b]})
    return rows


def side_by_side(a: dict, b: dict, names) -> list[dict]:
    rows = []
    for n in names:
        va, vb = a.get(n), b.get(n)
        rows.append({"name": n, "a": va, "b": vb,
                     "delta": None if va is None or vb is None or va < 0 or vb < 0 else vb - va})
    return rows


def fps_rows(a: dict, b: dict) -> list[dict]:
    """Device FPS (all devices, then each device) and end-to-end FPS of both runs."""
    ma, mb = a["metrics"], b["metrics"]
    rows = [{"name": "device FPS, all devices", "a": ma["device_fps_total"], "b": mb["device_fps_total"]},
            {"name": "end-to-end FPS", "a": ma["e2e_fps"], "b": mb["e2e_fps"]}]
    for side, m in (("a", ma), ("b", mb)):
        for name, d in m["devices"].items():
            rows.append({"name": f"device FPS, {name}", "a": d["fps"] if side == "a" else None,
                         "b": d["fps"] if side == "b" else None})
    return rows


def compare(a: Run, b: Run, images: list[dict], box_tol: float = 0.05, score_tol: float = 1e-4,
            differing: int = 8) -> dict:
    """compare.json: totals, verdicts with their rules, stats, per class, FPS, and the images that differ most."""
    per_image = match_images(a, b, images, box_tol, score_tol)
    ref = sum(r["a"] for r in per_image)
    matched = sum(r["matched"] for r in per_image)
    extra = sum(r["extra"] for r in per_image)
    fraction = matched / ref if ref else 1.0
    ap_a, ap_b = a.report["ap"]["stats"]["AP"], b.report["ap"]["stats"]["AP"]
    ratio = ap_ratio(ap_a, ap_b)
    ranked = sorted((r for r in per_image if r["missing"] or r["extra"]),
                    key=lambda r: (-(r["missing"] + r["extra"]), -r["max_score_diff"], r["image_id"]))
    return {
        "a": {"job": a.name, "folder": str(a.folder), "backend": a.report["params"]["backend"],
              "model": a.report["params"].get("model", "")},
        "b": {"job": b.name, "folder": str(b.folder), "backend": b.report["params"]["backend"],
              "model": b.report["params"].get("model", "")},
        "tolerances": {"box_px": box_tol, "score": score_tol},
        "totals": {"images": len(images), "a": ref, "b": sum(r["b"] for r in per_image), "matched": matched,
                   "missing": ref - matched, "extra": extra, "matched_fraction": fraction,
                   "max_box_diff": max((r["max_box_diff"] for r in per_image), default=0.0),
                   "max_score_diff": max((r["max_score_diff"] for r in per_image), default=0.0)},
        "verdicts": {
            "recipe": {"rule": RECIPE_RULE, "ap_a": ap_a, "ap_b": ap_b, "ratio": ratio,
                       "pass": ratio >= RECIPE_MIN_RATIO},
            "strict": {"rule": STRICT_RULE, "matched_fraction": fraction, "pass": fraction >= STRICT_MIN_MATCHED},
        },
        "stats": side_by_side(a.report["ap"]["stats"], b.report["ap"]["stats"], STAT_NAMES),
        "per_class": side_by_side(a.report["ap"]["per_class"], b.report["ap"]["per_class"],
                                  list(a.report["ap"]["per_class"])),
        "fps": fps_rows(a.report, b.report),
        "differing_images": len(ranked),
        "differing": ranked[:differing],
        "per_image": [{k: v for k, v in r.items() if not k.startswith("unmatched")} for r in per_image],
    }
