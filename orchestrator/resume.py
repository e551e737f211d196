"""`resume JOB`: re-enqueue only the shards without a result, then follow the job to its report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import add_broker_arg, add_run_dir_arg, open_state
from orchestrator.cluster import ClusterError, LocalCluster
from orchestrator.control import resume_job
from orchestrator.submit import live_devices, watch
from tasks.params import TIMINGS, ClusterTimings


def _shards(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:20])) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")


def embedded_folder(run_root: Path, job: str) -> Path:
    """The run folder whose embedded Redis holds the job: runs/JOB, or runs/SWEEP for a job of a sweep."""
    for folder in (run_root / job, run_root / job.rsplit("-b", 1)[0]):
        if (folder / LocalCluster.CONFIG).is_file() and (folder / "redis").is_dir():
            return folder
    raise UsageError(f"no embedded cluster of job {job} under {run_root}; for a running cluster give --broker "
                     f"(--run-dir)")


def resume_and_follow(args, state, timings, check_alive=None) -> int:
    if not state.exists(args.job):
        raise UsageError(f"no job {args.job} on this broker ({args.broker or 'the embedded cluster'})")
    plan = resume_job(state, args.job)
    if plan["status"] == "done":
        print(f"job {args.job} is done: nothing to resume", file=sys.stderr)
    else:
        parts = [f"{plan['done']}/{plan['n_shards']} shards have a result",
                 f"re-enqueued {len(plan['enqueued'])}" + (f" ({_shards(plan['enqueued'])})" if plan["enqueued"] else "")]
        if plan["queued"]:
            parts.append(f"{len(plan['queued'])} still queued")
        if plan["in_flight"]:
            parts.append(f"{len(plan['in_flight'])} running now")
        if plan["reduce"]:
            parts.append("reducer enqueued")
        print(f"job {args.job} (was {plan['status']}): {'; '.join(parts)}", file=sys.stderr)
        if check_alive is None and live_devices(state) == 0 and plan["enqueued"]:
            print("warning: no device worker holds a lease on this broker yet; the job waits for one", file=sys.stderr)
    if args.no_wait:
        return 0
    return watch(state, args.job, Path(args.run_dir).resolve() / args.job, timings, check_alive, args.timeout)[0]


def run(args) -> int:
    timings = ClusterTimings.with_ttl(args.lease_ttl) if args.lease_ttl else TIMINGS
    if args.broker:
        return resume_and_follow(args, open_state(args.broker), timings)
    if args.no_wait:
        raise UsageError("--no-wait needs a running cluster: the embedded one stops when resume ends (--no-wait)")
    folder = embedded_folder(Path(args.run_dir).resolve(), args.job)
    print(f"restarting the embedded cluster of job {args.job} from {folder}", file=sys.stderr)
    try:
        with LocalCluster.from_folder(folder) as cluster:
            return resume_and_follow(args, open_state(cluster.url), timings, cluster.check_alive)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def register(sub) -> None:
    p = sub.add_parser("resume", help="resume a job after a crash, Ctrl-C or cancel (safe to repeat)",
                       description="Re-enqueue only the shards of a job that have no result and are neither queued "
                                   "nor running, then follow it to its report like submit does. A shard result is "
                                   "written once, so repeating resume never counts an image twice. Without "
                                   "--broker it restarts the job's embedded cluster on the Redis data kept in its "
                                   "run folder (after a Ctrl-C or a crash of submit).",
                       epilog="example: python -m orchestrator resume 20250101-120000-ab12cd --broker redis://head:6379/0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id")
    add_broker_arg(p, "the cluster's Redis URL (default: restart the job's embedded cluster from its run folder)")
    add_run_dir_arg(p)
    p.add_argument("--no-wait", action="store_true", help="re-enqueue and return without following the job")
    p.add_argument("--lease-ttl", type=float, help=f"device lease TTL in seconds (default {TIMINGS.lease_ttl_s:g})")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds")
    p.set_defaults(func=run)
