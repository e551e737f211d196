"""The one writer of reports: a job's run folder and a sweep's, with the table printed on stdout."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from orchestrator.reporting.analysis_plots import write_analysis
from orchestrator.reporting.console import render, render_sweep, stdout_console
from orchestrator.reporting.data import collect, derive, sweep_summary
from orchestrator.reporting.html import write_html
from orchestrator.reporting.markdown import markdown, sweep_markdown
from orchestrator.reporting.plots import write_plots, write_sweep_plots
from tasks.state import JobState


def write_run_files(run_dir: str | Path, report: dict, results: list[dict] | None, text: str | None,
                    batches: list[dict] | None = None) -> Path:
    """report.json (every number), report.md and report.html, plots/*.png, the error analysis' gallery/*.png,
    report.txt (the table), batches.json (every device call) and results.json (COCO results) in the run folder;
    None leaves that file as it is."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if batches is None and (run_dir / "batches.json").is_file():
        batches = json.loads((run_dir / "batches.json").read_text())
    elif batches is not None:
        (run_dir / "batches.json").write_text(json.dumps(batches))
    derive(report)
    report["plots"] = write_plots(run_dir / "plots", report, batches)
    report["analysis"] = write_analysis(run_dir, report, results)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    md = markdown(report)
    (run_dir / "report.md").write_text(md)
    write_html(run_dir, md, f"Evaluation report: job {report['job']}")
    if text is not None:
        (run_dir / "report.txt").write_text(text)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def publish(run_dir: str | Path, report: dict, results: list[dict] | None = None,
            batches: list[dict] | None = None, keep_text: bool = True) -> int:
    """The table on stdout and the run folder written (report.txt too with `keep_text`); exit code 0 when done."""
    derive(report)
    console = stdout_console()
    render(report, console)
    write_run_files(run_dir, report, results, console.export_text() if keep_text else None, batches)
    return 0 if report["status"] == "done" else 1


def rewrite_job(state: JobState, job_id: str, run_dir: str | Path, with_results: bool = True) -> dict:
    """A finished job's run folder written again from the broker (e.g. with its sweep's rows); its report."""
    report, batches, results = collect(state, job_id, with_results)
    write_run_files(run_dir, report, results, None, batches)
    return report


def write_sweep(folder: Path, sweep_id: str, reports: list[dict]) -> dict:
    """sweep.json, report.md, report.html and the FPS-against-batch plot in the sweep's run folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sweep = sweep_summary(sweep_id, reports)
    sweep["plots"] = write_sweep_plots(folder / "plots", sweep["rows"])
    (folder / "sweep.json").write_text(json.dumps(sweep, indent=1))
    text = sweep_markdown(sweep)
    (folder / "report.md").write_text(text)
    write_html(folder, text, f"Batch sweep {sweep_id}")
    return sweep


def publish_sweep(folder: Path, sweep_id: str, reports: list[dict]) -> dict:
    """The sweep's table on stdout and its run folder written; its summary."""
    sweep = write_sweep(folder, sweep_id, reports)
    render_sweep(sweep, stdout_console())
    print(f"sweep report: {Path(folder) / 'report.md'}", file=sys.stderr)
    return sweep
