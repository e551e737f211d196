"""`resume JOB`: re-enqueue only the shards without a result, then follow the job to its report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from commandline import UsageError
from orchestrator.cli import add_broker_arg, add_broker_timeout_arg, broker_tls, check_broker_timeout, open_state
from orchestrator.cluster import ClusterError, LocalCluster
from orchestrator.control import resume_job
from orchestrator.jobs import Watcher, live_devices
from tasks.outage import BROKER_UNREACHABLE_EXIT, BrokerUnreachable
from tasks.settings import TIMINGS, ClusterTimings
from tasks.state import JobState

DEFAULT_RUN_ROOT = "runs"


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


def run_folder(state: JobState, job: str, run_root: str | None) -> Path:
    """Where the job's report goes: under `--run-dir` when given, else where its submit wrote it."""
    recorded = state.params(job).run_dir
    if run_root is None and recorded:
        return Path(recorded)
    return Path(run_root or DEFAULT_RUN_ROOT).resolve() / job


def describe(job: str, plan: dict) -> str:
    """One line: what resume found and what it enqueued."""
    if plan["status"] == "done":
        return f"job {job} is done: nothing to resume"
    parts = [f"{plan['done']}/{plan['n_shards']} shards have a result",
             f"re-enqueued {len(plan['enqueued'])}" + (f" ({_shards(plan['enqueued'])})" if plan["enqueued"] else "")]
    if plan["queued"]:
        parts.append(f"{len(plan['queued'])} still queued")
    if plan["in_flight"]:
        parts.append(f"{len(plan['in_flight'])} running now")
    if plan["reduce"]:
        parts.append("reducer enqueued")
    return f"job {job} (was {plan['status']}): {'; '.join(parts)}"


def resume_and_follow(args, state: JobState, watcher: Watcher) -> int:
    if not state.exists(args.job):
        raise UsageError(f"no job {args.job} on this broker ({args.broker or 'the embedded cluster'})")
    try:
        plan = watcher.outage().call(lambda: resume_job(state, args.job))
    except BrokerUnreachable as exc:
        print(f"error: {exc}; nothing was resumed", file=sys.stderr)
        return BROKER_UNREACHABLE_EXIT
    print(describe(args.job, plan), file=sys.stderr)
    if plan["status"] != "done" and plan["enqueued"] and watcher.check_alive is None:
        live_devices(state, warn=True)
    if args.no_wait:
        return 0
    return watcher.follow(state, args.job, run_folder(state, args.job, args.run_dir))


def run(args) -> int:
    timings = ClusterTimings.with_ttl(args.lease_ttl) if args.lease_ttl else TIMINGS
    check_broker_timeout(args)
    if args.broker:
        state = open_state(args.broker, broker_tls(args))
        return resume_and_follow(args, state, Watcher(timings, None, args.timeout, args.broker_timeout))
    if args.no_wait:
        raise UsageError("--no-wait needs a running cluster: the embedded one stops when resume ends (--no-wait)")
    folder = embedded_folder(Path(args.run_dir or DEFAULT_RUN_ROOT).resolve(), args.job)
    print(f"restarting the embedded cluster of job {args.job} from {folder}", file=sys.stderr)
    try:
        with LocalCluster.from_folder(folder) as cluster:
            watcher = Watcher(timings, cluster.check_alive, args.timeout, args.broker_timeout)
            return resume_and_follow(args, open_state(cluster.url), watcher)
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
                       epilog="example: python -m orchestrator resume 20250101-120000-ab12cd "
                              "--broker redis://head:6379/0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id")
    add_broker_arg(p, "the cluster's Redis URL (default: restart the job's embedded cluster from its run folder)")
    p.add_argument("--run-dir", help="folder of run folders: where the report goes and the embedded cluster is "
                                     f"found (default: the folder the job was submitted with; {DEFAULT_RUN_ROOT} "
                                     "to find an embedded cluster)")
    p.add_argument("--no-wait", action="store_true", help="re-enqueue and return without following the job")
    p.add_argument("--lease-ttl", type=float, help=f"device lease TTL in seconds (default {TIMINGS.lease_ttl_s:g})")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds")
    add_broker_timeout_arg(p)
    p.set_defaults(func=run)
