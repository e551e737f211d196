"""The error analysis' files: PR curves, the sorted per-class AP chart, TIDE's bars and the gallery's PNGs.

Boxes are drawn with Pillow (a base dependency): a rectangle and a label an object is all a gallery
needs, and `supervision` would bring its own stack for that. The charts use plots.py's figures.
"""
from __future__ import annotations

import json
from pathlib import Path

from evaluation.analysis import error_analysis
from orchestrator.reporting.plots import HAVE_MATPLOTLIB, _figure, _save

GALLERY_WIDTH = 640
COLOURS = {"tp": (40, 120, 255), "gt": (20, 170, 60), "missed": (255, 150, 0), "fp": (230, 30, 30)}


def pr_plot(path: Path, pr: dict) -> str:
    """All classes at IoU .50 and .75, and the weakest classes (IoU .50:.95), precision against recall."""
    from matplotlib.figure import Figure
    fig = Figure(figsize=(11.0, 4.5), dpi=100, layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, label in (("iou50", "IoU .50"), ("iou75", "IoU .75")):
        if pr[key] is not None:
            left.plot(pr["recall"], pr[key], label=f"all classes, {label}")
    for c in pr["weakest"]:
        right.plot(pr["recall"], c["precision"], label=f"{c['class']} ({c['ap']:.3f})")
    for ax, title in ((left, "all classes (mean over classes)"), (right, "weakest classes, IoU .50:.95")):
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="x-small")
    return _save(fig, path)


def per_class_plot(path: Path, per_class: dict) -> str:
    """Per-class AP, sorted, one bar each (classes without ground truth left out)."""
    rows = sorted((v, k) for k, v in per_class.items() if v is not None)
    fig, ax = _figure(8.0, 1.0 + 0.16 * max(1, len(rows)))
    ax.barh(range(len(rows)), [v for v, _ in rows], color="tab:blue")
    ax.set_yticks(range(len(rows)), [k for _, k in rows], fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("AP (IoU .50:.95)")
    ax.set_title("AP per class, weakest first")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def tide_plot(path: Path, tide: dict) -> str:
    """dAP per error type: AP50 points gained by fixing every error of that type."""
    fig, ax = _figure(7.0, 3.5)
    kinds = list(tide["dAP"])
    bars = ax.bar(kinds, [tide["dAP"][k] for k in kinds], color="tab:red")
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylabel("dAP (AP50 points)")
    ax.set_title(f"TIDE: AP50 {tide['ap50']:.2f}, gained by fixing each error type")
    return _save(fig, path)


def draw_boxes(path: Path, image_path: Path, boxes: list[tuple]) -> str | None:
    """The image with (COCO bbox, RGB colour, line width, label or None) boxes drawn in order, as a PNG;
    None when the image cannot be read."""
    from PIL import Image, ImageDraw, UnidentifiedImageError
    try:
        with Image.open(image_path) as im:
            image = im.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None
    scale = min(4.0, GALLERY_WIDTH / max(image.width, image.height, 1))  # small images grow: labels stay legible
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(image)
    for bbox, colour, width, label in boxes:
        x, y, w, h = (v * scale for v in bbox)
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=width)
        if label:
            draw.text((x + 2, max(0, y - 11)), label, fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return str(path)


def draw_gallery_image(path: Path, image_path: Path, entry: dict) -> str | None:
    """Ground truth (green, missed orange) and detections (blue true, red false with the error type)."""
    boxes = [(g["bbox"], COLOURS["missed" if g["missed"] else "gt"], 3 if g["missed"] else 2,
              f"missed {g['class']}" if g["missed"] else None) for g in entry["ground_truth"]]
    boxes += [(d["bbox"], COLOURS["tp" if d["verdict"] == "tp" else "fp"], 2,
               f"{d['class']} {d['score']:.2f}" + ("" if d["verdict"] == "tp" else f" {d['verdict']}"))
              for d in entry["detections"]]
    return draw_boxes(path, image_path, boxes)


def write_analysis(run_dir: Path, report: dict, results: list[dict] | None) -> dict | None:
    """report.json's "analysis" with its plots and gallery under the run folder (paths relative to it);
    None when the results or the annotation file are not at hand (a note says which)."""
    run_dir = Path(run_dir)
    if results is None and (run_dir / "results.json").is_file():
        results = json.loads((run_dir / "results.json").read_text())
    annotation_path = Path(report["params"].get("annotation", ""))
    if results is None:
        return {"skipped": "no results.json in the run folder"}
    if not annotation_path.is_file():
        return {"skipped": f"annotation file not found ({annotation_path})"}
    annotation = json.loads(annotation_path.read_text())
    analysis = error_analysis(annotation, results)
    if HAVE_MATPLOTLIB:
        folder = run_dir / "plots"
        plots = {"pr_curves": pr_plot(folder / "pr_curves.png", analysis["pr"]),
                 "per_class_ap": per_class_plot(folder / "per_class_ap.png", report["ap"]["per_class"]),
                 "tide": tide_plot(folder / "tide.png", analysis["tide"])}
        analysis["plots"] = {k: str(Path(p).relative_to(run_dir)) for k, p in plots.items()}
    images = Path(report["params"].get("image_dir", ""))
    for entry in analysis["gallery"]["images"]:
        png = draw_gallery_image(run_dir / "gallery" / f"{entry['image_id']}.png", images / entry["file_name"], entry)
        entry["png"] = str(Path(png).relative_to(run_dir)) if png else None
    return analysis
