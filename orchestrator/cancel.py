"""`cancel JOB`: revoke every task of a job on its cluster and wait until none of it runs."""
from __future__ import annotations

import argparse
import sys

from commandline import UsageError
from orchestrator.cli import add_broker_arg, broker_tls, open_state
from orchestrator.control import active_tasks, cancel_job, wait_stopped


def run(args) -> int:
    if not args.broker:
        raise UsageError("cancel needs the job's broker; an embedded job stops with its submit (Ctrl-C) (--broker)")
    state = open_state(args.broker, broker_tls(args))
    if not state.exists(args.job):
        raise UsageError(f"no job {args.job} on this broker ({args.broker})")
    outcome = cancel_job(state, args.job)
    if outcome["status"] == "done":
        print(f"job {args.job} is done: nothing to cancel")
        return 0
    was = "already cancelled" if not outcome["changed"] else f"cancelled (was {outcome['was']})"
    print(f"job {args.job}: {was}; {outcome['removed']} queued task(s) taken out of the queues, "
          f"{outcome['revoked']} task id(s) revoked", file=sys.stderr)
    running = wait_stopped(state, args.job, args.timeout)
    if running:
        where = ", ".join(f"shard {s} on {d}" for s, d in sorted(running.items()))
        print(f"error: still running after {args.timeout:g} s: {where}", file=sys.stderr)
        return 1
    still = active_tasks(state, args.job)
    if still:
        print(f"error: still running: {', '.join(still)}", file=sys.stderr)
        return 1
    print(f"job {args.job} cancelled: no task of it is running; `python -m orchestrator resume {args.job} "
          f"--broker {args.broker}` runs the shards without a result")
    return 0


def register(sub) -> None:
    p = sub.add_parser("cancel", help="cancel a job: revoke its tasks everywhere (safe to repeat)",
                       description="Mark the job cancelled, take its queued tasks out of the queues, revoke every "
                                   "task id it was sent under, and wait until no device runs a shard of it (a "
                                   "running shard stops at its next batch and writes nothing). Shard results "
                                   "already written are kept: `resume` runs only the rest.",
                       epilog="example: python -m orchestrator cancel 20250101-120000-ab12cd "
                              "--broker redis://head:6379/0",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job", metavar="JOB", help="job id")
    add_broker_arg(p, "the cluster's Redis URL")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for running shards to stop (default 60)")
    p.set_defaults(func=run)
