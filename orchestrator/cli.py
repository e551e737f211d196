"""What every subcommand shares: the one-line usage error and the broker connection."""
from __future__ import annotations

import argparse

from tasks.state import BrokerError, JobState


class UsageError(Exception):
    """Bad input: printed as one line `error: <what> (<file or flag>)` with exit 2."""


def add_broker_arg(p: argparse.ArgumentParser, help_text: str | None = None) -> None:
    p.add_argument("--broker", metavar="URL",
                   help=help_text or "Redis URL of a running cluster, e.g. redis://head:6379/0")


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
