"""Cancel and resume a job on its broker (DESIGN.md section 7); both are safe to repeat.

cancel: mark the job cancelled (every task of it becomes a no-op, a running shard stops at its next
batch), take its messages out of the queues, and revoke every task id it was sent under.
resume: re-enqueue only the shards that have no result and are neither queued nor running.
"""
from __future__ import annotations

import time

from tasks.app import INFER_QUEUE, PREPROCESS_QUEUE, REDUCE_QUEUE
from tasks.recovery import account
from tasks.state import JobState

QUEUES = [PREPROCESS_QUEUE, INFER_QUEUE, REDUCE_QUEUE]


def active_tasks(state: JobState, job_id: str, timeout_s: float = 1.0) -> list[str]:
    """Tasks of the job that workers answering a broadcast report as running (`worker: task[shard]`)."""
    replies = state.tasks.active(timeout_s)
    return [f"{worker}: {t['name']}[{t.get('kwargs', {}).get('shard')}]"
            for worker, tasks in replies.items() for t in tasks
            if (t.get("kwargs") or {}).get("job_id") == job_id]


def cancel_job(state: JobState, job_id: str) -> dict:
    """Mark, unqueue, revoke. A finished job is left as it is."""
    status = state.status(job_id)
    if status is None:
        raise KeyError(job_id)
    if status == "done":
        return {"status": status, "removed": 0, "revoked": 0, "changed": False}
    fields = {} if status == "cancelled" else {
        "t_cancelled": time.time(), "error": "cancelled (`resume` runs the shards without a result)"}
    state.set_status(job_id, "cancelled", **fields)  # first: whatever is delivered from now on is a no-op
    removed = state.unqueue(state.queued(QUEUES, job_id))
    ids = state.task_ids(job_id)
    if ids:
        state.tasks.revoke(ids)
    return {"status": "cancelled", "was": status, "removed": removed, "revoked": len(ids),
            "changed": status != "cancelled"}


def wait_stopped(state: JobState, job_id: str, timeout_s: float, poll_s: float = 0.2) -> dict[int, str]:
    """Until no device runs a shard of the job (each stops at its next batch); returns what still runs."""
    deadline = time.time() + timeout_s
    while True:
        running = state.leases.shards_in_flight(job_id)
        if not running or time.time() > deadline:
            return running
        time.sleep(poll_s)


def resume_job(state: JobState, job_id: str) -> dict:
    """Re-enqueue the shards that have no result and are neither queued nor running; or only the reducer."""
    status = state.status(job_id)
    if status is None:
        raise KeyError(job_id)
    if status == "done":
        return {"status": status, "enqueued": [], "queued": [], "in_flight": {}, "reduce": False}
    params = state.params(job_id)
    accounting = account(state, job_id)
    todo, missing = accounting.unaccounted, accounting.missing
    reduce = not missing and status != "reducing" and not accounting.reduce_queued
    state.note_resume(job_id)
    if todo or reduce or status in ("failed", "cancelled"):
        state.reopen(job_id)  # before enqueueing: tasks must not skip
    if todo:
        state.tasks.job(job_id, 0, params.batch, preprocess_first=bool(params.store), shards=todo)
    state.note_enqueued(job_id)  # a submit that died while enqueueing never said so
    if reduce:
        state.allow_reduce_again(job_id)  # e.g. a cancelled job's reducer skipped: claim it again
        reduce = state.claim_reduce(job_id)
        if reduce:
            state.tasks.reduce(job_id)
    return {"status": status, "enqueued": todo, "queued": sorted(accounting.queued & set(missing)),
            "in_flight": {s: d for s, d in accounting.in_flight.items() if s in missing}, "reduce": reduce,
            "done": state.n_shards(job_id) - len(missing), "n_shards": state.n_shards(job_id)}  # as accounted
