"""`report JOB`: the final table (box AP, device FPS, latency, end-to-end FPS) and the run folder files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.cli import UsageError, add_broker_arg, open_state
from tasks.coco_eval import STAT_NAMES
from tasks.reduce import reduce_job, union_results

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
    console.print(f"validity: {m['validity_rule']}")
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


def write_run_files(run_dir: str | Path, report: dict, results: list[dict] | None, text: str) -> Path:
    """report.json (every number), report.txt (the table) and results.json (COCO results) in the run folder."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report, indent=1))
    (run_dir / "report.txt").write_text(text)
    if results is not None:
        (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


def run(args) -> int:
    run_dir = Path(args.run_dir) / args.job
    if args.broker:
        state = open_state(args.broker)
        if not state.exists(args.job):
            raise UsageError(f"no job {args.job} on this broker ({args.broker})")
        report = reduce_job(state, args.job) if args.reduce else state.report(args.job)
        if report is None:
            raise UsageError(f"job {args.job} has no report yet (status {state.status(args.job)}) (JOB)")
        results = union_results(state.results(args.job))
    else:
        if args.reduce:
            raise UsageError("--reduce needs the job's broker (--broker)")
        path = run_dir / "report.json"
        if not path.is_file():
            raise UsageError(f"no report for job {args.job} ({path})")
        report, results = json.loads(path.read_text()), None
    console = stdout_console()
    render(report, console)
    if args.broker:
        write_run_files(run_dir, report, results, console.export_text())
    return 0 if report["status"] == "done" else 1


def register(sub) -> None:
    p = sub.add_parser("report", help="print a job's report (and write it to its run folder)",
                       description="Print a finished job's table: box AP, device FPS, latency, end-to-end FPS.",
                       epilog="example: python -m orchestrator report 20250101-120000-ab12cd --broker redis://head:6379/0")
    p.add_argument("job", metavar="JOB", help="job id")
    add_broker_arg(p, "read the report from this Redis (default: the run folder's report.json)")
    p.add_argument("--run-dir", default="runs", help="folder of run folders (default runs)")
    p.add_argument("--reduce", action="store_true", help="run the reducer again on the stored shard results")
    p.set_defaults(func=run)
