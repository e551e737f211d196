"""Cancel and resume a job on its broker (DESIGN.md section 7); both are safe to repeat.

cancel: mark the job cancelled (every task of it becomes a no-op, a running shard stops at its next
batch), take its messages out of the queues, and revoke every task id it was sent under.
resume: re-enqueue only the shards that have no result and are neither queued nor running.
"""
from __future__ import annotations

import json
import time

from tasks.app import INFER_QUEUE, PREPROCESS_QUEUE, REDUCE_QUEUE, app, enqueue_job, enqueue_reduce, tasks_key
from tasks.queues import queued_tasks, remove_queued
from tasks.state import JobState, job_key
from workers.lease import REGISTRY

QUEUES = [PREPROCESS_QUEUE, INFER_QUEUE, REDUCE_QUEUE]


def lease_registry(state: JobState) -> list[tuple[str, dict, bool]]:
    """Every registered device lease as (lease key, record, still held), liveness read in one round trip."""
    entries = state.r.hgetall(REGISTRY)
    with state.r.pipeline(transaction=False) as p:
        for key in entries:
            p.exists(key)
        held = p.execute()
    return [(key, json.loads(raw), bool(h)) for (key, raw), h in zip(entries.items(), held)]


def shards_in_flight(state: JobState, job_id: str) -> dict[int, str]:
    """Shards of the job that a device holding a live lease is running now: shard -> host/device."""
    out = {}
    for _, rec, held in lease_registry(state):
        shard = rec.get("shard")
        if held and shard and shard.get("job") == job_id:
            out[int(shard["shard"])] = f"{rec['host']}/{rec['device']}"
    return out


def active_tasks(job_id: str, timeout_s: float = 1.0) -> list[str]:
    """Tasks of the job that workers answering a broadcast report as running (`worker: task[shard]`)."""
    replies = app.control.inspect(timeout=timeout_s).active() or {}
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
    removed = remove_queued(state.r, queued_tasks(state.r, QUEUES, job_id))
    ids = sorted(state.r.smembers(tasks_key(job_id)))
    if ids:
        app.control.revoke(ids)
    return {"status": "cancelled", "was": status, "removed": removed, "revoked": len(ids),
            "changed": status != "cancelled"}


def wait_stopped(state: JobState, job_id: str, timeout_s: float, poll_s: float = 0.2) -> dict[int, str]:
    """Until no device runs a shard of the job (each stops at its next batch); returns what still runs."""
    deadline = time.time() + timeout_s
    while True:
        running = shards_in_flight(state, job_id)
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
    queued = {int(t.kwargs["shard"]) for t in queued_tasks(state.r, [INFER_QUEUE], job_id)
              if t.name == "evaluator.infer" and "shard" in t.kwargs}
    in_flight = shards_in_flight(state, job_id)
    missing = state.shards_without_result(job_id)
    todo = [s for s in missing if s not in queued and s not in in_flight]
    key = job_key(job_id)
    reducer_queued = any(t.kwargs.get("job_id") == job_id for t in queued_tasks(state.r, [REDUCE_QUEUE]))
    reduce = not missing and status != "reducing" and not reducer_queued
    state.r.hincrby(key, "resumes", 1)  # the report says end-to-end FPS includes an interruption
    state.r.hset(key, "t_resumed", time.time())
    if todo or reduce or status in ("failed", "cancelled"):
        state.r.hdel(key, "error", "t_done")
        state.set_status(job_id, "running")  # before enqueueing: tasks must not skip
    if todo:
        enqueue_job(job_id, 0, params.batch, preprocess_first=bool(params.store), shards=todo)
    if reduce:
        state.r.hdel(key, "reduce_enqueued")  # e.g. a cancelled job's reducer skipped: claim it again
        reduce = state.claim_reduce(job_id)
        if reduce:
            enqueue_reduce(job_id)
    return {"status": status, "enqueued": todo, "queued": sorted(queued & set(missing)),
            "in_flight": {s: d for s, d in in_flight.items() if s in missing}, "reduce": reduce,
            "done": state.r.hlen(f"{key}:results"), "n_shards": int(state.r.hget(key, "n_shards") or 0)}
