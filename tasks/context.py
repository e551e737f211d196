"""What a worker process hands its tasks: job state on its broker, its settings, and (device workers) the
shard runner.

tasks/ never imports workers/ (DESIGN.md section 3): `python -m workers` builds the context and installs
it from Celery's `worker_init` (the worker's own process) and `worker_process_init` (each prefork child,
which makes its own Redis client: clients are not shared over fork), so the Celery tasks stay thin
wrappers and tests can call either side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from tasks.settings import Settings
from tasks.state import JobState

ShardRunner = Callable[[str, int], dict]  # (job_id, shard) -> small JSON summary


@dataclass
class WorkerContext:
    settings: Settings
    state: JobState
    runner: ShardRunner | None = None  # a device worker's; None in the CPU pool


_current: WorkerContext | None = None


def install(context: WorkerContext | None) -> None:
    global _current
    _current = context


def current() -> WorkerContext:
    if _current is None:
        raise RuntimeError("the evaluator's tasks run in a worker started by `python -m workers`")
    return _current


def runner() -> ShardRunner:
    runner = current().runner
    if runner is None:
        raise RuntimeError("evaluator.infer runs only in a device worker (python -m workers --device DEV)")
    return runner
