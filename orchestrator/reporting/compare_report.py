"""compare.md, compare.json, compare.html and the differing images' PNGs of a comparison of two runs."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.comparison import Run
from orchestrator.reporting.analysis_plots import draw_boxes
from orchestrator.reporting.html import write_html
from orchestrator.reporting.markdown import _n, table

A_COLOUR, B_COLOUR, GT_COLOUR = (40, 120, 255), (230, 30, 30), (20, 170, 60)
SCORE_SHOWN = 0.3  # matched detections below it are left out of the pictures (unmatched ones are always drawn)


def draw_differing(folder: Path, a: Run, b: Run, annotation: dict, rows: list[dict]) -> None:
    """One PNG per differing image: ground truth green, A blue, B red; unmatched detections thick and labelled."""
    names = {c["id"]: c["name"] for c in annotation["categories"]}
    gts: dict[int, list] = {}
    for g in annotation["annotations"]:
        gts.setdefault(int(g["image_id"]), []).append(g)
    image_dir = Path(a.report["params"]["image_dir"])
    for row in rows:
        image_id = row["image_id"]
        boxes = [(g["bbox"], GT_COLOUR, 1, None) for g in gts.get(image_id, [])]
        for run, colour, unmatched, tag in ((a, A_COLOUR, row["unmatched_a"], "A"),
                                            (b, B_COLOUR, row["unmatched_b"], "B")):
            for k, r in enumerate(run.results.get(image_id, [])):
                lost = k in unmatched
                if lost or r["score"] >= SCORE_SHOWN:
                    label = f"{tag} only: {names.get(r['category_id'], '?')} {r['score']:.2f}" if lost else None
                    boxes.append((r["bbox"], colour, 3 if lost else 1, label))
        png = draw_boxes(folder / "images" / f"{image_id}.png", image_dir / row["file_name"], boxes)
        row["png"] = str(Path(png).relative_to(folder)) if png else None


def compare_markdown(c: dict) -> str:
    a, b, t, v = c["a"], c["b"], c["totals"], c["verdicts"]
    lines = [f"# Comparison: {a['job']} (A, the reference) against {b['job']} (B)", "",
             f"- A: {a['backend']}" + (f", model `{a['model']}`" if a["model"] else "") + f" ({a['folder']})",
             f"- B: {b['backend']}" + (f", model `{b['model']}`" if b["model"] else "") + f" ({b['folder']})",
             f"- matching: same class, every corner within {c['tolerances']['box_px']:g} px of the network input, "
             f"score within {c['tolerances']['score']:g} (the rules of `conversion verify`)", ""]
    lines += ["## Verdicts", ""]
    lines += table(["verdict", "rule", "figure", "result"],
                   [["recipe", v["recipe"]["rule"], f"{100 * v['recipe']['ratio']:.2f} %",
                     "PASS" if v["recipe"]["pass"] else "FAIL"],
                    ["strict", v["strict"]["rule"], f"{100 * v['strict']['matched_fraction']:.2f} %",
                     "PASS" if v["strict"]["pass"] else "FAIL"]])
    lines += ["## Detections", ""]
    lines += table(["images", "A's detections", "B's detections", "matched", "missing in B", "extra in B",
                    "matched fraction", "max corner diff, image px", "max score diff"],
                   [[t["images"], t["a"], t["b"], t["matched"], t["missing"], t["extra"],
                     f"{100 * t['matched_fraction']:.2f} %", f"{t['max_box_diff']:.2e}", f"{t['max_score_diff']:.2e}"]])
    lines += ["## Box AP", ""]
    lines += table(["stat", "A", "B", "B - A"], [[r["name"], _n(r["a"], ".3f"), _n(r["b"], ".3f"),
                                                 _n(r["delta"], "+.3f")] for r in c["stats"]])
    lines += ["### Per class", ""]
    lines += table(["class", "A", "B", "B - A"], [[r["name"], _n(r["a"], ".3f"), _n(r["b"], ".3f"),
                                                  _n(r["delta"], "+.3f")] for r in c["per_class"]])
    lines += ["## FPS", ""]
    lines += table(["figure", "A", "B"], [[r["name"], _n(r["a"], ".2f"), _n(r["b"], ".2f")] for r in c["fps"]])
    lines += [f"## Images that differ most ({c['differing_images']} differ)", ""]
    if not c["differing"]:
        return "\n".join(lines + ["No image differs: every detection of A has its partner in B and B has no other.",
                                  ""])
    lines += ["Ranked by unmatched detections, then by score change. Green: ground truth; blue: A; red: B; "
              "thick and labelled: a detection without a partner.", ""]
    lines += table(["image id", "file", "A", "B", "matched", "missing in B", "extra in B", "max score diff"],
                   [[r["image_id"], r["file_name"], r["a"], r["b"], r["matched"], r["missing"], r["extra"],
                     f"{r['max_score_diff']:.2e}"] for r in c["differing"]])
    lines += [f"![image {r['image_id']}]({r['png']})" for r in c["differing"] if r.get("png")]
    return "\n".join(lines + [""])


def write_comparison(folder: Path, c: dict, a: Run, b: Run, annotation: dict) -> Path:
    """The comparison's folder: compare.json, compare.md, compare.html and images/*.png; compare.md's path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    draw_differing(folder, a, b, annotation, c["differing"])
    for r in c["differing"]:
        r.pop("unmatched_a", None)
        r.pop("unmatched_b", None)
    (folder / "compare.json").write_text(json.dumps(c, indent=1))
    text = compare_markdown(c)
    (folder / "compare.md").write_text(text)
    write_html(folder, text, f"Comparison {c['a']['job']} against {c['b']['job']}", "compare.html")
    return folder / "compare.md"
