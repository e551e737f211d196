"""The device side of `evaluator.infer`, installed by the device worker process at start.

tasks/ never imports workers/ (DESIGN.md section 3): `python -m workers --device ...` installs
its shard runner here, so the Celery task stays a thin wrapper and tests can call either side.
"""
from __future__ import annotations

from typing import Callable

ShardRunner = Callable[[str, int], dict]  # (job_id, shard) -> small JSON summary

_runner: ShardRunner | None = None


def install(runner: ShardRunner | None) -> None:
    global _runner
    _runner = runner


def current() -> ShardRunner:
    if _runner is None:
        raise RuntimeError("evaluator.infer runs only in a device worker (python -m workers --device DEV)")
    return _runner
