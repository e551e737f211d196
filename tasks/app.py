"""The Celery app, its settings (DESIGN.md section 4) and the three tasks, thin wrappers over plain functions.

The app is configured from the environment at import (what `celery -A tasks.app:app flower` needs); an entry
point applies its own settings once with `apply` before it connects. Tasks are sent by name through
tasks/enqueue.py, so a sender never imports the reducer or COCOeval.
"""
from __future__ import annotations

import logging

from celery import Celery

from tasks import context
from tasks.outage import AckRidingOut
from tasks.settings import Settings, celery_config

log = logging.getLogger("tasks.app")

PREPROCESS_QUEUE, INFER_QUEUE, REDUCE_QUEUE = "preprocess", "infer", "reduce"  # one shared infer queue: pull

app = Celery("evaluator")


def apply(settings: Settings) -> Settings:
    """Configure the app for `settings` (a process does this once, before its first connection)."""
    app.config_from_object(celery_config(settings), force=True)
    return settings


apply(Settings())


@app.task(name="evaluator.preprocess", Request=AckRidingOut)
def preprocess(job_id: str, shard: int, batch: int, device: str = "cpu") -> dict:
    """Fill the tensor store for one shard (this worker's own store when it was started with --store)."""
    from tasks.preprocessing import preprocess_shard
    ctx = context.current()
    return preprocess_shard(ctx.state, job_id, shard, ctx.settings.store_root)


@app.task(name="evaluator.infer", bind=True, Request=AckRidingOut)
def infer(self, job_id: str, shard: int, batch: int, redelivered_from: str | None = None, **_) -> dict:
    """Run one shard on this worker's device; the result is written once, a duplicate is a no-op.

    After every batch the task's state becomes PROGRESS (images done of the shard's, images/s, batch, device,
    host): stored for `status JOB`, and sent as a `task-progress` event, which Flower shows live (its text in
    the task's result field until the real result replaces it). The stored state is forgotten when the shard
    ends (its result is not kept), so PROGRESS never outlives the run.
    """
    def progress(**fields) -> None:
        self.update_state(state="PROGRESS", meta=fields)
        self.send_event("task-progress", result=repr(fields))

    try:
        return context.runner()(job_id, shard, progress, self.request.id)
    finally:
        try:
            self.backend.forget(self.request.id)
        except Exception as exc:  # noqa: BLE001 - progress is for people watching: the shard's outcome stands
            log.warning("progress of task %s not cleared: %s", self.request.id, exc)


@app.task(name="evaluator.reduce", Request=AckRidingOut)
def reduce(job_id: str) -> dict:
    """Coverage check, COCOeval, report (a cancelled job is left alone: `resume` reduces it later).

    While a pool's follower streams the job (tasks.streaming) this waits for it instead.
    """
    from tasks.streaming import reduce_when_free
    state = context.current().state
    if state.status(job_id) == "cancelled":
        return {"skipped": "job cancelled"}
    report = reduce_when_free(state, job_id)
    if report is None:
        return {"skipped": f"job {state.status(job_id)}"}
    return {"status": report["status"], "AP": report["ap"]["stats"]["AP"], "errors": report["errors"]}
