"""The flags several orchestrator commands take, and the broker connection they open."""
from __future__ import annotations

import argparse

from commandline import UsageError
from tasks.outage import BROKER_TIMEOUT_S, BROKER_UNREACHABLE_EXIT
from tasks.state import BrokerError, JobState


def add_broker_arg(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--broker", metavar="URL",
                   help=help_text or "Redis URL of a running cluster, e.g. redis://head:6379/0")


def add_broker_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker-timeout", type=float, default=BROKER_TIMEOUT_S, metavar="S",
                   help=f"wait this long for an unreachable broker before giving up with exit code "
                        f"{BROKER_UNREACHABLE_EXIT} (default {BROKER_TIMEOUT_S:g}); the job stays resumable")


def check_broker_timeout(args) -> float:
    if args.broker_timeout <= 0:
        raise UsageError(f"--broker-timeout must be positive, got {args.broker_timeout:g} (--broker-timeout)")
    return args.broker_timeout


def add_run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs", help="folder of run folders (default runs)")


def open_state(url: str) -> JobState:
    """Job state (and the task sender) on the broker at `url`; one-line error when Redis does not answer."""
    state = JobState.open(url)
    try:
        state.ping()
    except BrokerError as exc:
        raise UsageError(f"cannot reach the broker: {exc} ({url})") from exc
    return state


def positive_int(flag: str, value: int) -> int:
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {value} ({flag})")
    return value
