"""Submitting a job to Redis and following it to its report."""
from __future__ import annotations

import json
import secrets
import time

from tasks.params import JobParams
from tasks.shards import plan_shards
from tasks.state import FINISHED, JobState


class JobFailed(RuntimeError):
    """The job ended failed or cancelled; the message says why."""


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def submit_job(state: JobState, params: JobParams, images: list[dict], n_devices: int,
               manifest: dict | None = None, preprocess_first: bool = True) -> int:
    """Plan shards, record the job, enqueue preprocessing (unless the store is known warm) then inference."""
    shards = plan_shards(images, params.batch, n_devices, params.size_mode, params.static_size, params.shard_size)
    state.create(params, shards)
    fields = {"preprocess_tasks": len(shards) if preprocess_first else 0, "t_running": time.time()}
    if manifest:
        fields["manifest"] = json.dumps(manifest)
    state.set_status(params.job_id, "running", **fields)  # before any task can finish it
    state.tasks.job(params.job_id, len(shards), params.batch, preprocess_first=preprocess_first)
    return len(shards)


def wait_job(state: JobState, job_id: str, on_progress=None, check_alive=None, poll_s: float = 0.25,
             timeout_s: float | None = None) -> dict:
    """Poll until the job finishes; returns its report (raises JobFailed when there is none)."""
    deadline = time.time() + timeout_s if timeout_s else None
    while True:
        summary = state.summary(job_id)
        if on_progress:
            on_progress(summary)
        status = summary.get("status")
        if status in FINISHED:
            report = state.report(job_id)
            if report is None:
                raise JobFailed(f"job {job_id} {status}: {summary.get('error', 'no reason recorded')}")
            return report
        if check_alive:
            check_alive()
        if deadline and time.time() > deadline:
            raise JobFailed(f"job {job_id} still {status} after {timeout_s:.0f} s")
        time.sleep(poll_s)
