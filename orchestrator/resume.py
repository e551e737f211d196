"""`resume JOB`: re-enqueue only the shards without a result, then follow the job to its report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from orchestrator.cli import UsageError, add_broker_arg, open_state
from orchestrator.control import resume_job
from orchestrator.submit import live_devices, watch
from tasks.params import TIMINGS, ClusterTimings


def _shards(ids) -> str:
    ids = sorted(ids)
    return ", ".join(map(str, ids[:20])) + (f", ... ({len(ids) - 20} more)" if len(ids) > 20 else "")


def run(args) -> int:
    if not args.broker:
        raise UsageError("resume needs the job's broker (--broker)")
    state = open_state(args.broker)
    if not state.exists(args.job):
        raise UsageError(f"no job {args.job} on this broker ({args.broker})")
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
        if live_devices(state) == 0 and plan["enqueued"]:
            print("warning: no device worker holds a lease on this broker yet; the job waits for one", file=sys.stderr)
    if args.no_wait:
        return 0
    timings = ClusterTimings.with_ttl(args.lease_ttl) if args.lease_ttl else TIMINGS
    return watch(state, args.job, Path(args.run_dir).resolve() / args.job, timings, timeout_s=args.timeout)[0]


def register(sub) -> None:
    p = sub.add_parser("resume", help="resume a job after a crash, Ctrl-C or cancel (safe to repeat)",
                       description="Re-enqueue only the shards of a job that have no result and are neither queued "
                                   "nor running, then follow it to its report like submit does. A shard result is "
                                   "written once, so repeating resume never counts an image twice.",
                       epilog="example: python -m orchestrator resume 20250101-120000-ab12cd --broker redis://head:6379/0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id")
    add_broker_arg(p, "the cluster's Redis URL")
    p.add_argument("--run-dir", default="runs", help="folder of run folders (default runs)")
    p.add_argument("--no-wait", action="store_true", help="re-enqueue and return without following the job")
    p.add_argument("--lease-ttl", type=float, help=f"device lease TTL in seconds (default {TIMINGS.lease_ttl_s:g})")
    p.add_argument("--timeout", type=float, help="give up following after this many seconds")
    p.set_defaults(func=run)
