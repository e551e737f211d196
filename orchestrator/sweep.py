"""Batch sweeps: one job per batch size over the same preprocessed tensors, and the recipe's table."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from commandline import UsageError
from orchestrator.cli import positive_int
from orchestrator.plots import fps_vs_batch
from orchestrator.report_data import sweep_rows
from orchestrator.report_md import sweep_table, table


def parse_batches(text: str) -> list[int]:
    """`8` or `1,4,8,16` -> [8] or [1, 4, 8, 16]; one-line errors naming --batch."""
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values:
        raise UsageError(f"--batch takes a batch size or a list like 1,4,8,16, got {text!r} (--batch)")
    for b in values:
        positive_int("--batch", b)
    if len(set(values)) != len(values):
        raise UsageError(f"a batch size is listed twice: {text} (--batch)")
    return values


def model_for(template: str, batch: int) -> str:
    """`models/dcn_bs{batch}.om` -> the static export made for this batch size (a dynamic model: the same file)."""
    return template.replace("{batch}", str(batch))


def sweep_summary(sweep_id: str, reports: list[dict]) -> dict:
    """sweep.json: the table's rows, where preprocessing ran, and whether AP was the same at every batch size."""
    pre = [{"job": r["job"], "batch": r["params"]["batch"], **(r.get("preprocessing") or {})} for r in reports]
    aps = {r["params"]["batch"]: r["ap"]["stats"]["AP"] for r in reports}
    return {
        "id": sweep_id,
        "jobs": [r["job"] for r in reports],
        "batches": [r["params"]["batch"] for r in reports],
        "rows": sweep_rows(reports),
        "preprocessing": pre,
        # once: only the first job preprocessed anything; every later job read every image from the store
        "preprocessed_once": all(p.get("preprocessed", 0) == 0 for p in pre[1:]),
        "ap_by_batch": {str(b): ap for b, ap in aps.items()},
        "ap_equal": len(set(aps.values())) <= 1,
        "status": "done" if reports and all(r["status"] == "done" for r in reports) else "failed",
    }


def sweep_markdown(sweep: dict) -> str:
    lines = [f"# Batch sweep {sweep['id']}", "",
             f"Batch sizes {', '.join(map(str, sweep['batches']))}, one job each, over the same preprocessed tensors.",
             ""]
    lines += sweep_table(sweep["rows"])
    first = sweep["preprocessing"][0] if sweep["preprocessing"] else {}
    once = ("preprocessing ran once: only the first job preprocessed images; every later job read them all from "
            "the tensor store" if sweep["preprocessed_once"] else "preprocessing ran in more than one job")
    lines += ["## Preprocessing", "", once + f" ({first.get('preprocessed', 0)} images in job {first.get('job', '-')}).",
              ""]
    lines += table(["job", "batch", "pool tasks", "preprocessed (pool)", "preprocessed (devices)", "read from store"],
                   [[p["job"], p["batch"], p.get("pool_tasks", "-"), p.get("pool_preprocessed", "-"),
                     p.get("device_preprocessed", "-"), p.get("pool_store_hits", 0) + p.get("device_store_hits", 0)]
                    for p in sweep["preprocessing"]])
    same = "the same at every batch size" if sweep["ap_equal"] else "NOT the same at every batch size"
    lines += [f"Box AP is {same}.", "", "![FPS against batch size](plots/fps_vs_batch.png)", "",
              "Each job's full report: " + ", ".join(f"`../{j}/report.md`" for j in sweep["jobs"]), ""]
    return "\n".join(lines)


def write_sweep(folder: Path, sweep_id: str, reports: list[dict]) -> dict:
    """sweep.json, report.md and the FPS-against-batch plot in the sweep's run folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep = sweep_summary(sweep_id, reports)
    try:
        fps_vs_batch(folder / "plots" / "fps_vs_batch.png", sweep["rows"])
        sweep["plots"] = {"fps_vs_batch": "plots/fps_vs_batch.png"}
    except ImportError:
        sweep["plots"] = {}
    (folder / "sweep.json").write_text(json.dumps(sweep, indent=1))
    (folder / "report.md").write_text(sweep_markdown(sweep))
    return sweep


def render_sweep(sweep: dict, console: Console) -> None:
    """The recipe's table on stdout."""
    t = Table(title=f"batch sweep {sweep['id']}", title_justify="left")
    for col in ("batch", "device", "box AP", "device FPS", "end-to-end FPS", "p50 ms", "p99 ms", "preprocessed",
                "valid"):
        t.add_column(col, justify="left" if col == "device" else "right")
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in sweep["rows"]:
        t.add_row(str(r["batch"]), r["device"], fmt(r["ap"], ".3f"), fmt(r["device_fps"], ".2f"),
                  fmt(r["e2e_fps"], ".2f"), fmt(r["p50_ms"], ".1f"), fmt(r["p99_ms"], ".1f"),
                  fmt(r["preprocessed"], "d"), "yes" if r["valid"] else "no")
    console.print(t)
    console.print("preprocessing ran once (the later jobs read every image from the tensor store)"
                  if sweep["preprocessed_once"] else "preprocessing ran in more than one job of the sweep")
    console.print(f"box AP {'equal' if sweep['ap_equal'] else 'DIFFERENT'} at every batch size: "
                  + ", ".join(f"batch {b} {ap:.3f}" for b, ap in sweep["ap_by_batch"].items()))
