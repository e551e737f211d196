"""report.md: the job's report for people; every number in its tables is a value of report.json."""
from __future__ import annotations

from evaluation.coco_eval import STAT_NAMES


def _n(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _yes(value) -> str:
    return {True: "yes", False: "no", None: "not attested"}[value]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out + [""]


def sweep_table(rows: list[dict]) -> list[str]:
    """The recipe's table: batch, box AP, device FPS, end-to-end FPS, p50/p99 latency, per device."""
    return table(["batch", "device", "box AP", "device FPS", "end-to-end FPS", "p50 ms", "p99 ms", "images",
                  "preprocessed", "valid"],
                 [[r["batch"], r["device"], _n(r["ap"], ".3f"), _n(r["device_fps"], ".2f"), _n(r["e2e_fps"], ".2f"),
                   _n(r["p50_ms"], ".1f"), _n(r["p99_ms"], ".1f"), r["images"], _n(r["preprocessed"], "d"),
                   _yes(r["valid"])] for r in rows])


def _header(report: dict) -> list[str]:
    p = report["params"]
    size = f"static {p['static_size']}" if p["size_mode"] == "static" else p["size_mode"]
    lines = [f"# Evaluation report: job {report['job']}", ""]
    if p.get("sample"):
        lines += ["> **BUILT-IN SAMPLE**: the generated selftest set ran; this AP means nothing.", ""]
    model = f", model `{p['model']}`" if p.get("model") else ""
    lines += [f"- status: **{report['status']}**", f"- backend: {p['backend']}{model}",
              f"- batch size {p['batch']}, size mode {size}, {p['warmup_batches']} warm-up batches per worker",
              f"- images: {report['coverage']['expected']}, devices: {len(report['metrics']['devices'])}"]
    if p.get("sweep"):
        lines.append(f"- part of batch sweep {p['sweep']} (its report: `../{p['sweep']}/report.md`)")
    if report.get("resumes"):
        lines.append(f"- resumed {report['resumes']} time(s): end-to-end FPS includes the interruption")
    board = report.get("dashboard")
    if board:
        lines.append(f"- dashboard: [{board['tasks']}]({board['tasks']}), search `{board['search']}` "
                     f"(or [its API]({board['api']})); Flower keeps the tasks while it runs")
    return lines + [""]


def _ap(report: dict) -> list[str]:
    ap = report["ap"]
    lines = [f"## Box AP (COCOeval bbox, {ap.get('evaluator', 'pycocotools')}, all images)", ""]
    lines += table(list(STAT_NAMES), [[_n(ap["stats"][n], ".3f") for n in STAT_NAMES]])
    lines += ["### Per class", ""]
    lines += table(["class", "AP"], [[name, _n(v, ".3f")] for name, v in ap["per_class"].items()])
    return lines


def _throughput(report: dict) -> list[str]:
    m, p = report["metrics"], report["params"]
    lines = [f"## Throughput (device call only, after {p['warmup_batches']} warm-up batches per worker)", ""]
    lines += table(["device", "images", "batches", "shards", "device FPS", "p50 ms", "p90 ms", "p99 ms", "valid"],
                   [[r["device"], r["images"], r["batches"], r["shards"],
                     _n(r["device_fps"], ".2f") if r["device_fps"] is not None
                     else f"({_n(r['fps_with_warmup'], '.2f')})",
                     _n(r["p50_ms"], ".1f"), _n(r["p90_ms"], ".1f"), _n(r["p99_ms"], ".1f"), _yes(r["valid"])]
                    for r in report["fps_table"]])
    lines += [f"End-to-end FPS {_n(m['e2e_fps'], '.2f')}: {m['images']} images in {m['wall_s']:.1f} s from submit to "
              f"the reducer's start; COCOeval took {report['timestamps']['evaluate_s']:.1f} s.", ""]
    if any(r["device_fps"] is None for r in report["fps_table"]):
        lines += ["FPS in brackets: no batch after warm-up on that device, so warm-up is included.", ""]
    return lines


def _validity(report: dict) -> list[str]:
    v = report["validity"]
    lines = ["## Validity", "", f"Rule per device: {v['rule']}.", "", f"Overall: {v['overall_rule']}.", ""]
    lines += table(["device", "verdict", "what fell short"],
                   [[name, "valid" if d["valid"] else "NOT valid", "; ".join(d["short"]) or "-"]
                    for name, d in v["devices"].items()])
    verdict = "VALID" if v["overall"]["valid"] else "NOT VALID: " + "; ".join(v["overall"]["short"])
    return lines + [f"**Overall: {verdict}**", ""]


def _operations(report: dict) -> list[str]:
    lines = ["## Idle attestation (before each worker took its device)", ""]
    lines += table(["device", "pid", "idle", "how"], [[a["device"], a["pid"], _yes(a["idle"]), a["detail"]]
                                                      for a in report["attestation"]])
    pre = report.get("preprocessing")
    if pre:
        lines += ["## Preprocessing", "",
                  f"{pre['preprocessed']} images preprocessed in this job ({pre['pool_tasks']} pool tasks enqueued); "
                  "the rest were read from the tensor store.", ""]
        lines += table(["where", "images preprocessed", "read from the store"],
                       [["preprocessing pool", pre["pool_preprocessed"], pre["pool_store_hits"]],
                        ["device workers (store miss)", pre["device_preprocessed"], pre["device_store_hits"]]])
    cov = report["coverage"]
    lines += ["## Coverage", ""]
    lines += [f"- error: {e}" for e in report["errors"]] or [
        f"Every one of the {cov['expected']} image ids was counted exactly once."]
    lines += [f"- unreadable, counted once without detections: {i}: {why}" for i, why in cov["unreadable"].items()]
    return lines + [""]


def _manifest(report: dict) -> list[str]:
    m = report.get("manifest", {})
    pk = m.get("packages") or {}
    rows = [["model", m.get("model") or "-"], ["model sha256", m.get("model_sha256") or "-"],
            ["checkpoint", m.get("checkpoint") or "-"], ["checkpoint sha256", m.get("checkpoint_sha256") or "-"],
            ["annotation", m.get("annotation") or "-"], ["annotation sha256", m.get("annotation_sha256") or "-"],
            ["preprocessing fingerprint", m.get("preprocessing") or "-"], ["git commit", m.get("git_commit") or "-"],
            ["submitted from", m.get("submitted_from") or "-"],
            ["packages (submitting host)", ", ".join(f"{k} {v}" for k, v in pk.items() if v) or "-"]]
    lines = ["## Reproducibility manifest", ""] + table(["item", "value"], rows)
    lines += table(["device", "pid", "identity", "backend", "onnxruntime", "torch", "CANN", "NPU driver"],
                   [[h["device"], h["pid"],
                     ", ".join(f"{k} {v}" for k, v in (h.get("identity") or {}).items() if k != "device") or "-",
                     h["backend"].get("backend", "-"), h["onnxruntime"] or "-", h["torch"] or "-", h["cann"] or "-",
                     h["npu_driver"] or "-"] for h in m.get("hosts", [])])
    return lines


TIDE_MEANING = {"Cls": "right box, wrong class", "Loc": "right class, box IoU 0.1-0.5",
                "Both": "wrong class and a poor box", "Dupl": "a second detection of a found box",
                "Bkg": "nothing there (IoU <= 0.1)", "Miss": "a box no detection found"}


def _analysis(report: dict) -> list[str]:
    a = report.get("analysis")
    if not a:
        return []
    lines = ["## Error analysis", ""]
    if "skipped" in a:
        return lines + [f"Not made: {a['skipped']}.", ""]
    t = a["tide"]
    lines += [f"TIDE (Bolya et al. 2020; foreground IoU 0.5, background IoU 0.1): AP50 {t['ap50']:.2f} points "
              "by its own count; dAP is what fixing every error of a type gives back, in AP50 points.", ""]
    lines += table(["error type", "what", "errors", "dAP"],
                   [[k, TIDE_MEANING[k], t["counts"][k], _n(t["dAP"][k], ".2f")] for k in t["dAP"]])
    plots = a.get("plots") or {}
    titles = {"pr_curves": "precision-recall curves", "per_class_ap": "AP per class, sorted",
              "tide": "TIDE dAP per error type"}
    lines += [f"![{titles[name]}]({path})" for name, path in plots.items()] + ([""] if plots else [])
    g = a["gallery"]
    lines += [f"### Images with most false positives and misses (detections scoring >= {g['score']:g})", "",
              "Green: ground truth; orange: missed; blue: a true positive; red: a false positive with its error type.",
              ""]
    if not g["images"]:
        return lines + ["No false positive and no miss at that score.", ""]
    lines += table(["image id", "file", "false positives", "misses"],
                   [[e["image_id"], e["file_name"], e["false_positives"], e["misses"]] for e in g["images"]])
    lines += [f"![image {e['image_id']}]({e['png']})" for e in g["images"] if e.get("png")]
    return lines + [""]


def markdown(report: dict) -> str:
    """The whole report.md."""
    lines = _header(report) + _ap(report) + _throughput(report)
    sweep = report.get("sweep")
    if sweep:
        lines += [f"## Batch sweep {sweep['id']}", ""] + sweep_table(sweep["rows"])
    lines += _validity(report) + _operations(report)
    plots = report.get("plots") or {}
    if plots:
        lines += ["## Plots", ""] + [f"![{name.replace('_', ' ')}]({path})" for name, path in plots.items()] + [""]
    lines += _analysis(report) + _manifest(report)
    return "\n".join(lines)


def sweep_markdown(sweep: dict) -> str:
    """The batch sweep's report.md."""
    lines = [f"# Batch sweep {sweep['id']}", "",
             f"Batch sizes {', '.join(map(str, sweep['batches']))}, one job each, over the same preprocessed tensors.",
             ""]
    lines += sweep_table(sweep["rows"])
    first = sweep["preprocessing"][0] if sweep["preprocessing"] else {}
    once = ("preprocessing ran once: only the first job preprocessed images; every later job read them all from "
            "the tensor store" if sweep["preprocessed_once"] else "preprocessing ran in more than one job")
    lines += ["## Preprocessing", "",
              once + f" ({first.get('preprocessed', 0)} images in job {first.get('job', '-')}).", ""]
    lines += table(["job", "batch", "pool tasks", "preprocessed (pool)", "preprocessed (devices)", "read from store"],
                   [[p["job"], p["batch"], p.get("pool_tasks", "-"), p.get("pool_preprocessed", "-"),
                     p.get("device_preprocessed", "-"), p.get("pool_store_hits", 0) + p.get("device_store_hits", 0)]
                    for p in sweep["preprocessing"]])
    same = "the same at every batch size" if sweep["ap_equal"] else "NOT the same at every batch size"
    lines += [f"Box AP is {same}.", "", "![FPS against batch size](plots/fps_vs_batch.png)", "",
              "Each job's full report: " + ", ".join(f"`../{j}/report.md`" for j in sweep["jobs"]), ""]
    return "\n".join(lines)
