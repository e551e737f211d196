"""`report JOB`: the final table (box AP, device FPS, latency, end-to-end FPS) and the run folder files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from commandline import UsageError
from orchestrator.cli import add_broker_arg, add_run_dir_arg, open_state
from evaluation.coco_eval import STAT_NAMES
from tasks.reduce import reduce_job

SAMPLE_BANNER = ("BUILT-IN SAMPLE: no COCO data was found, so this ran the generated selftest set with {what}. "
                 "Its AP means nothing. For a real evaluation put val2017 under data/coco and a checkpoint "
                 "under checkpoints/ (or pass --annotations, --images, --model).")


def stdout_console() -> Console:
    """Plain text when not a terminal, wide enough for the tables."""
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 120, record=True, soft_wrap=True)


def _num(value, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def sample_banner(params: dict) -> str:
    what = ("a random-weights model (backend torch)" if params["backend"] == "torch"
            else f"the {params['backend']} backend")
    return SAMPLE_BANNER.format(what=what)


def render(report: dict, console: Console) -> None:
    """Print the report: what ran, box AP, the FPS table, coverage problems."""
    p = report["params"]
    if p.get("sample"):
        console.print(f"[bold red]{sample_banner(p)}[/]")
    size = f"{p['size_mode']} ({p['static_size']})" if p["size_mode"] == "static" else p["size_mode"]
    model = f"  model {p['model']}" if p.get("model") else ""
    console.print(f"job {report['job']}  status {report['status']}  backend {p['backend']}{model}  "
                  f"batch {p['batch']}  size mode {size}  images {report['coverage']['expected']}  "
                  f"devices {len(report['metrics']['devices'])}")
    stats = report["ap"]["stats"]
    console.print(f"box AP {stats['AP']:.3f}")
    ap = Table(title="box AP (COCOeval bbox, all images)", title_justify="left")
    for name in STAT_NAMES:
        ap.add_column(name, justify="right")
    ap.add_row(*(f"{stats[n]:.3f}" for n in STAT_NAMES))
    console.print(ap)
    m = report["metrics"]
    fps = Table(title=f"device FPS and batch latency (device call only, after {p['warmup_batches']} warm-up "
                      f"batches per worker)", title_justify="left")
    for col in ("device", "images", "batches", "shards", "device FPS", "p50 ms", "p90 ms", "p99 ms", "valid"):
        fps.add_column(col, justify="left" if col == "device" else "right")
    for name, d in m["devices"].items():
        lat = d["latency_ms"]
        device_fps = _num(d["fps"], ".2f") if d["fps"] else f"({_num(d.get('fps_with_warmup'), '.2f')})"
        fps.add_row(name, str(d["images"]), str(d["batches"]), str(len(d["shards"])), device_fps,
                    _num(lat["p50"]), _num(lat["p90"]), _num(lat["p99"]), "yes" if d["valid"] else "no")
    fps.add_row("all devices", str(sum(d["images"] for d in m["devices"].values())), "", "",
                _num(m["device_fps_total"], ".2f"), "", "", "", "yes" if m["valid"] else "no")
    console.print(fps)
    console.print(f"end-to-end FPS {_num(m['e2e_fps'], '.2f')}: {m['images']} images in {m['wall_s']:.1f} s "
                  f"(submit to reducer start); COCOeval {report['timestamps']['evaluate_s']:.1f} s")
    if any(not d["fps"] for d in m["devices"].values()):
        console.print("(FPS in brackets: no batch after warm-up on that device, so warm-up is included)")
    if m.get("tensor_wait_note"):
        console.print(m["tensor_wait_note"])
    console.print(f"validity: {m['validity_rule']}")
    for name, v in (report.get("validity") or {}).get("devices", {}).items():
        if not v["valid"]:
            console.print(f"  {name} not valid: {'; '.join(v['short'])}", markup=False)
    for w in report.get("workers", []):
        idle = {True: "idle", False: "NOT idle", None: "not attested"}[w["attest"]["idle"]]
        console.print(f"worker {w['host']}/{w['device']} pid {w['pid']}: {w['backend'].get('backend')}, "
                      f"{idle} before start ({w['attest']['detail']})", markup=False)
    cov = report["coverage"]
    if cov["unreadable"]:
        console.print(f"unreadable images ({len(cov['unreadable'])}), counted once, no detections:")
        for image_id, why in cov["unreadable"].items():
            console.print(f"  {image_id}: {why}", markup=False)
    for err in report["errors"]:
        console.print(f"[bold red]error:[/] {err}")
    if not report["errors"]:
        console.print(f"coverage: every one of the {cov['expected']} image ids counted exactly once")


def write_run_files(run_dir: str | Path, report: dict, results: list[dict] | None, text: str | None,
                    batches: list[dict] | None = None) -> Path:
    """report.json (every number), report.md, plots/*.png, report.txt (the table), batches.json (every device
    call) and results.json (COCO results) in the run folder; None leaves that file as it is."""
    from orchestrator.plots import write_plots
    from orchestrator.report_data import derive
    from orchestrator.report_md import markdown

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if batches is None and (run_dir / "batches.json").is_file():
        batches = json.loads((run_dir / "batches.json").read_text())
    elif batches is not None:
        (run_dir / "batches.json").write_text(json.dumps(batches))
    derive(report)
    report["plots"] = write_plots(run_dir / "plots", report, batches)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    (run_dir / "report.md").write_text(markdown(report))
    if text is not None:
        (run_dir / "report.txt").write_text(text)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def sweep_report(args, state=None) -> int:
    """`report SWEEP`: the batch sweep's table from its jobs (on the broker, else their run folders)."""
    from orchestrator.report_data import collect, sweep_reports
    from orchestrator.sweep import render_sweep, write_sweep

    root = Path(args.run_dir)
    if state is not None:
        reports = []
        for job in (r["job"] for r in sweep_reports(state, args.job)):
            report, batches, results = collect(state, job)
            write_run_files(root / job, report, results, None, batches)
            reports.append(report)
    else:
        jobs = json.loads((root / args.job / "sweep.json").read_text())["jobs"]
        reports = [json.loads((root / job / "report.json").read_text()) for job in jobs]
    if not reports:
        raise UsageError(f"no finished job of sweep {args.job} (JOB)")
    sweep = write_sweep(root / args.job, args.job, reports)
    render_sweep(sweep, stdout_console())
    print(f"sweep report: {root / args.job / 'report.md'}", file=sys.stderr)
    return 0 if sweep["status"] == "done" else 1


def run(args) -> int:
    from orchestrator.report_data import collect, derive, sweep_reports

    run_dir = Path(args.run_dir) / args.job
    batches = None
    if args.broker:
        state = open_state(args.broker)
        if not state.exists(args.job):
            if sweep_reports(state, args.job):
                return sweep_report(args, state)
            raise UsageError(f"no job {args.job} on this broker ({args.broker})")
        if args.reduce:
            reduce_job(state, args.job)
        if state.report(args.job) is None:
            raise UsageError(f"job {args.job} has no report yet (status {state.status(args.job)}) (JOB)")
        report, batches, results = collect(state, args.job)
    else:
        if args.reduce:
            raise UsageError("--reduce needs the job's broker (--broker)")
        if (run_dir / "sweep.json").is_file():
            return sweep_report(args)
        path = run_dir / "report.json"
        if not path.is_file():
            raise UsageError(f"no report for job {args.job} ({path})")
        report, results = json.loads(path.read_text()), None
    derive(report)
    console = stdout_console()
    render(report, console)
    write_run_files(run_dir, report, results, console.export_text() if args.broker else None, batches)
    print(f"report: {run_dir / 'report.md'}", file=sys.stderr)
    return 0 if report["status"] == "done" else 1


def register(sub) -> None:
    p = sub.add_parser("report", help="print a job's report and write report.md, report.json and plots",
                       description="Print a finished job's table (box AP, device FPS, latency, end-to-end FPS) and "
                                   "write its run folder: report.md, report.json, plots/*.png. JOB may be a batch "
                                   "sweep's id: its table over every batch size.",
                       epilog="example: python -m orchestrator report 20250101-120000-ab12cd --broker redis://head:6379/0")
    p.add_argument("job", metavar="JOB", help="job id (or batch sweep id)")
    add_broker_arg(p, "read the report from this Redis (default: the run folder's report.json)")
    add_run_dir_arg(p)
    p.add_argument("--reduce", action="store_true", help="run the reducer again on the stored shard results")
    p.set_defaults(func=run)
