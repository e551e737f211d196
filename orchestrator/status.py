"""`status [JOB]`: where jobs stand (live from Redis with --broker, else from the run folders)."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import (add_broker_arg, add_broker_timeout_arg, add_run_dir_arg, broker_tls, check_broker_timeout,
                              open_state)
from tasks.lease import describe_holder
from tasks.outage import BROKER_TIMEOUT_S, BROKER_UNREACHABLE_EXIT, BrokerUnreachable, Outage
from tasks.state import JobState


def _line(job_id: str, s: dict) -> str:
    ap = f"  AP {s['ap']:.3f}" if "ap" in s else ""
    err = f"  error: {s['error']}" if s.get("error") else ""
    return (f"{job_id}  {s.get('status', '?'):9s} shards {s.get('shards_done', 0)}/{s.get('n_shards', 0)}  "
            f"images {s.get('images_done', 0)}/{s.get('n_images', 0)}{ap}{err}")


def live_lines(state: JobState, job: str | None) -> list[str]:
    """What `status --broker` prints, read in full before anything is printed (a broker outage midway
    repeats the reading, never the printing)."""
    ids = [job] if job else state.job_ids()
    if job and not state.exists(job):
        raise UsageError(f"no job {job} on this broker (JOB)")
    lines = [_line(job_id, state.summary(job_id)) for job_id in ids]
    if job:
        missing = state.shards_without_result(job)
        lines.append(f"shards without a result: {', '.join(map(str, missing)) or 'none'}")
    lines.append("devices:")
    for _, rec, held in sorted(state.leases.entries(), key=lambda entry: entry[0]):
        alive = "held" if held else "EXPIRED (the reaper gives its shard back)"
        lines.append(f"  {rec['host']}/{rec['device']}: {alive} by {describe_holder(rec)}")
    running = sorted(state.tasks.running(job), key=lambda s: (s["job"], int(s["shard"])))
    lines.append("running shards:" + ("" if running else " none"))
    lines.extend(f"  {_running_line(shard, job is None)}" for shard in running)
    return lines


def live_status(state: JobState, job: str | None, broker_timeout_s: float = BROKER_TIMEOUT_S) -> int:
    outage = Outage(broker_timeout_s, say=lambda line: print(line, file=sys.stderr))
    try:
        lines = outage.call(lambda: live_lines(state, job))
    except BrokerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BROKER_UNREACHABLE_EXIT
    print("\n".join(lines))
    return 0


def _running_line(shard: dict, with_job: bool) -> str:
    """`shard 3 on host/npu:0: 16/24 images, 8.41 images/s` from the task's last PROGRESS."""
    where = f"{'job ' + shard['job'] + ' ' if with_job else ''}shard {shard['shard']} on {shard['device']}"
    p = shard["progress"]
    if p is None:
        return f"{where}: no batch done yet ({time.time() - float(shard.get('since', 0)):.0f} s in)"
    rate = f", {p['images_per_s']:.2f} images/s" if p.get("images_per_s") is not None else ""
    return f"{where}: {p['done']}/{p['images']} images{rate}"


def folder_status(run_dir: Path, job: str | None) -> int:
    paths = [run_dir / job / "report.json"] if job else sorted(run_dir.glob("*/report.json"))
    if job and not paths[0].is_file():
        raise UsageError(f"no report for job {job} ({paths[0]}); a running job needs --broker")
    for path in paths:
        r = json.loads(path.read_text())
        s = {"status": r["status"], "ap": r["ap"]["stats"]["AP"], "n_images": r["coverage"]["expected"],
             "images_done": r["coverage"]["counted"], "shards_done": "-", "n_shards": "-",
             "error": "; ".join(r["errors"])}
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["timestamps"]["submit"]))
        print(f"{when}  {_line(r['job'], s)}")
    if not paths:
        print(f"no finished jobs under {run_dir}")
    return 0


def run(args) -> int:
    if args.broker:
        return live_status(open_state(args.broker, broker_tls(args)), args.job, check_broker_timeout(args))
    return folder_status(Path(args.run_dir), args.job)


def register(sub) -> None:
    p = sub.add_parser("status", help="show jobs, device leases and the progress of running shards",
                       description="Show where jobs stand: live from a cluster's Redis (with each running shard's "
                                   "images done and images/s), or finished ones from the run folders.",
                       epilog="example: python -m orchestrator status --broker redis://head:6379/0")
    p.add_argument("job", nargs="?", metavar="JOB", help="one job id (default: all)")
    add_broker_arg(p, "read live state from this Redis")
    add_broker_timeout_arg(p)
    add_run_dir_arg(p)
    p.set_defaults(func=run)
