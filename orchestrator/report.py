"""`report JOB`: a finished job's table on stdout and its run folder rebuilt (from the broker or the folder)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import add_broker_arg, add_run_dir_arg, broker_tls, open_state
from orchestrator.reporting.data import collect, sweep_reports
from orchestrator.reporting.writer import publish, publish_sweep, rewrite_job
from tasks.reduce import reduce_job
from tasks.state import JobState


def sweep_report(root: Path, sweep_id: str, state: JobState | None = None) -> int:
    """`report SWEEP`: the batch sweep's table from its jobs (on the broker, else their run folders)."""
    if state is not None:
        reports = [rewrite_job(state, r["job"], root / r["job"]) for r in sweep_reports(state, sweep_id)]
    else:
        jobs = json.loads((root / sweep_id / "sweep.json").read_text())["jobs"]
        reports = [json.loads((root / job / "report.json").read_text()) for job in jobs]
    if not reports:
        raise UsageError(f"no finished job of sweep {sweep_id} (JOB)")
    return 0 if publish_sweep(root / sweep_id, sweep_id, reports)["status"] == "done" else 1


def from_broker(args, root: Path) -> int:
    state = open_state(args.broker, broker_tls(args))
    if not state.exists(args.job):
        if sweep_reports(state, args.job):
            return sweep_report(root, args.job, state)
        raise UsageError(f"no job {args.job} on this broker ({args.broker})")
    if args.reduce:
        reduce_job(state, args.job)
    if state.report(args.job) is None:
        raise UsageError(f"job {args.job} has no report yet (status {state.status(args.job)}) (JOB)")
    report, batches, results = collect(state, args.job)
    return job_report(root / args.job, report, results, batches)


def from_folder(args, root: Path) -> int:
    if args.reduce:
        raise UsageError("--reduce needs the job's broker (--broker)")
    if (root / args.job / "sweep.json").is_file():
        return sweep_report(root, args.job)
    path = root / args.job / "report.json"
    if not path.is_file():
        raise UsageError(f"no report for job {args.job} ({path})")
    return job_report(root / args.job, json.loads(path.read_text()), keep_text=False)


def job_report(run_dir: Path, report: dict, results: list[dict] | None = None, batches: list[dict] | None = None,
               keep_text: bool = True) -> int:
    code = publish(run_dir, report, results, batches, keep_text)
    print(f"report: {run_dir / 'report.md'}", file=sys.stderr)
    return code


def run(args) -> int:
    root = Path(args.run_dir)
    return from_broker(args, root) if args.broker else from_folder(args, root)


def register(sub) -> None:
    p = sub.add_parser("report", help="print a job's report and write report.md, report.json and plots",
                       description="Print a finished job's table (box AP, device FPS, latency, end-to-end FPS) and "
                                   "write its run folder: report.md, report.json, plots/*.png. JOB may be a batch "
                                   "sweep's id: its table over every batch size.",
                       epilog="example: python -m orchestrator report 20250101-120000-ab12cd "
                              "--broker redis://head:6379/0")
    p.add_argument("job", metavar="JOB", help="job id (or batch sweep id)")
    add_broker_arg(p, "read the report from this Redis (default: the run folder's report.json)")
    add_run_dir_arg(p)
    p.add_argument("--reduce", action="store_true", help="run the reducer again on the stored shard results")
    p.set_defaults(func=run)
