"""`dashboard`: Flower on the cluster's broker, with basic auth from FLOWER_BASIC_AUTH and task events on.

Like `FLOWER_BASIC_AUTH=user:pass celery -A tasks.app:app --broker URL flower --port 5555`, but every path needs
the login except `/healthcheck` (orchestrator/flower_gate.py), it listens on 127.0.0.1 unless `--address` says
otherwise, and it shows the columns that make a job readable: task name (evaluator.preprocess / infer /
reduce), its kwargs (job id, shard, batch, device), result (the device and host that ran it) and worker
(`npu:0-PID@host`).
"""
from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from contextlib import contextmanager

from kombu.utils.url import maybe_sanitize_url

from commandline import UsageError
from orchestrator.cli import add_broker_arg, broker_tls, open_state, positive_int
from orchestrator.cluster import LocalCluster, free_port
from orchestrator.flower_gate import serve
from tasks.app import app, apply
from tasks.settings import TIMINGS, Settings, broker_from_env
from tasks.state import JobState

AUTH_ENV = "FLOWER_BASIC_AUTH"
TASK_COLUMNS = "name,uuid,state,kwargs,result,received,started,runtime,worker"
_AUTH = re.compile(r"[^:,\s]+:[^,\s]+(,[^:,\s]+:[^,\s]+)*")


def basic_auth() -> str:
    """FLOWER_BASIC_AUTH (`user:password`, several comma-separated); Flower never starts without a login."""
    value = os.environ.get(AUTH_ENV, "")
    if not _AUTH.fullmatch(value):
        raise UsageError(f"set {AUTH_ENV}=user:password: the dashboard never starts without a login ({AUTH_ENV})")
    return value


def flower_argv(port: int, address: str) -> list[str]:
    """Flower's own options (the login comes from the environment, never from argv: `ps` shows argv)."""
    return [f"--port={port}", f"--address={address}", f"--tasks_columns={TASK_COLUMNS}",
            "--enable_events=True", "--purge_offline_workers=600"]


def start_dashboard(cluster: LocalCluster, port: int | None) -> None:
    """Flower beside the embedded cluster, for as long as it runs; a login is made up when none is set."""
    auth = os.environ.get(AUTH_ENV)
    if auth:
        basic_auth()  # one-line error when malformed
        login = f"log in as {auth.split(':', 1)[0]}, password from {AUTH_ENV}"
    else:
        auth = f"evaluator:{secrets.token_urlsafe(9)}"
        login = f"user evaluator, password {auth.split(':', 1)[1]} (set {AUTH_ENV} to choose)"
    url = cluster.start_dashboard(port or free_port(), auth)
    print(f"dashboard: {url} (Flower, while this job runs; {login})", file=sys.stderr, flush=True)


def listening(address: str) -> str:
    """Where an address listens, in words."""
    if address in ("", "0.0.0.0", "::"):
        return f"every interface ({address or '0.0.0.0'})"
    return f"{address} only" if address in ("127.0.0.1", "::1", "localhost") else address


@contextmanager
def linked_from_reports(state: JobState, url: str):
    """While Flower runs it holds the broker's dashboard lease, whose URL the reports of the jobs it watched link to
    (a second dashboard on the same broker is not linked)."""
    lease = state.dashboard_lease(url, TIMINGS.lease_ttl_s)
    if lease.try_acquire():
        lease.start_heartbeat()
    else:
        other = (state.dashboard() or {}).get("url")
        print(f"note: job reports link to the dashboard that was here first, {other}", file=sys.stderr)
    try:
        yield
    finally:
        lease.release()


def run(args) -> int:
    user = basic_auth().split(":", 1)[0]
    positive_int("--port", args.port)
    url = args.broker or broker_from_env()
    tls = broker_tls(args, url)
    state = open_state(url, tls)  # one-line error when the broker does not answer
    apply(Settings(tls=tls).with_broker(url))
    host = "127.0.0.1" if args.address in ("", "0.0.0.0", "::") else args.address
    print(f"dashboard: http://{host}:{args.port}/ listening on {listening(args.address)}; login required on every "
          f"path but /healthcheck (user {user}, password from {AUTH_ENV}); broker {maybe_sanitize_url(url)}",
          file=sys.stderr, flush=True)
    with linked_from_reports(state, f"http://{host}:{args.port}/"):
        serve(app, flower_argv(args.port, args.address))
    return 0


def register(sub) -> None:
    p = sub.add_parser("dashboard", help="Flower on the cluster's broker (basic auth from FLOWER_BASIC_AUTH)",
                       description="Start Flower, the Celery dashboard, on the cluster's broker: live workers, "
                                   "every task with its job id, shard, batch and device, task events on. Basic "
                                   f"auth from {AUTH_ENV} (user:password) is required on every path but "
                                   "/healthcheck (which answers OK). Its HTTP API: /api/workers, /api/tasks.",
                       epilog=f"example: {AUTH_ENV}=admin:secret python -m orchestrator dashboard "
                              "--broker redis://head:6379/0 --port 5555",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arg(p, "the cluster's Redis URL (default: $EVALUATOR_BROKER)")
    p.add_argument("--port", type=int, default=5555, help="HTTP port (default 5555)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this host only; 0.0.0.0: every interface)")
    p.set_defaults(func=run)
