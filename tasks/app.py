"""The Celery app, its settings (DESIGN.md section 4) and the three tasks, thin wrappers over plain functions."""
from __future__ import annotations

import os

from celery import Celery

from tasks import runtime
from tasks.params import TIMINGS, broker_from_env
from tasks.preprocessing import preprocess_shard
from tasks.streaming import reduce_when_free
from tasks.state import JobState, connect

PREPROCESS_QUEUE = "preprocess"
INFER_QUEUE = "infer"  # one shared queue: every device worker pulls, a fast card takes more
REDUCE_QUEUE = "reduce"
# Redis lists are polled by priority, 0 first: a shard given back by the reaper jumps the queue.
INFER_PRIORITY = 6
REDELIVERY_PRIORITY = 0

app = Celery("evaluator")


def configure(broker_url: str | None = None) -> str:
    """Point the app (and job state) at a Redis; returns the URL in use."""
    url = broker_url or broker_from_env()
    _drop_connections()
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_serializer="json",
        result_serializer="json",
        event_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": TIMINGS.visibility_timeout_s},
        result_backend_transport_options={"visibility_timeout": TIMINGS.visibility_timeout_s},
        result_expires=7 * 24 * 3600,
        task_routes={
            "evaluator.preprocess": {"queue": PREPROCESS_QUEUE},
            "evaluator.infer": {"queue": INFER_QUEUE},
            "evaluator.reduce": {"queue": REDUCE_QUEUE},
        },
        worker_hijack_root_logger=False,
    )
    os.environ["EVALUATOR_BROKER"] = url  # child processes (prefork pool) see the same broker
    _states.clear()
    return url


_states: dict[int, JobState] = {}


def _drop_connections() -> None:
    """Forget pooled broker and backend connections, so re-pointing the app never reuses the old Redis."""
    from kombu import pools
    pools.reset()  # close every pooled connection AND forget the pools: the same URL later gets fresh ones
    app._pool = None
    amqp = app.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def job_state() -> JobState:
    """This process's JobState on the app's broker (one per process: clients are not shared over fork)."""
    pid = os.getpid()
    if pid not in _states:
        _states[pid] = JobState(connect(app.conf.broker_url))
    return _states[pid]


@app.task(name="evaluator.preprocess")
def preprocess(job_id: str, shard: int, batch: int, device: str = "cpu") -> dict:
    """Fill the tensor store for one shard (this worker's own store when it was started with --store)."""
    return preprocess_shard(job_state(), job_id, shard, os.environ.get("EVALUATOR_STORE") or None)


@app.task(name="evaluator.infer")
def infer(job_id: str, shard: int, batch: int, device: str = "any", redelivered_from: str | None = None) -> dict:
    """Run one shard on this worker's device; the result is written once, a duplicate is a no-op."""
    return runtime.current()(job_id, shard)


@app.task(name="evaluator.reduce")
def reduce(job_id: str) -> dict:
    """Coverage check, COCOeval, report (a cancelled job is left alone: `resume` reduces it later).

    While a pool's follower streams the job (tasks.streaming) this waits for it instead.
    """
    if job_state().status(job_id) == "cancelled":
        return {"skipped": "job cancelled"}
    report = reduce_when_free(job_state(), job_id)
    if report is None:
        return {"skipped": f"job {job_state().status(job_id)}"}
    return {"status": report["status"], "AP": report["ap"]["stats"]["AP"], "errors": report["errors"]}


def tasks_key(job_id: str) -> str:
    """Set of every task id a job was sent under, so that `cancel` can revoke them all."""
    return f"job:{job_id}:tasks"


def _remember(job_id: str, sent) -> None:
    job_state().r.sadd(tasks_key(job_id), sent.id)


def enqueue_job(job_id: str, n_shards: int, batch: int, preprocess_first: bool = True,
                shards: list[int] | None = None) -> None:
    """Preprocessing for every shard first (unless the store is known warm), then inference, in shard order."""
    shards = list(range(n_shards)) if shards is None else shards
    if preprocess_first:
        for shard in shards:
            enqueue_preprocess(job_id, shard, batch)
    for shard in shards:
        enqueue_infer(job_id, shard, batch)


def enqueue_preprocess(job_id: str, shard: int, batch: int) -> None:
    _remember(job_id, preprocess.apply_async(kwargs={"job_id": job_id, "shard": shard, "batch": batch,
                                                     "device": "cpu"}))


def enqueue_infer(job_id: str, shard: int, batch: int, redelivered_from: str | None = None) -> None:
    kwargs = {"job_id": job_id, "shard": shard, "batch": batch, "device": "any"}
    if redelivered_from:
        kwargs["redelivered_from"] = redelivered_from
    _remember(job_id, infer.apply_async(kwargs=kwargs,
                                        priority=REDELIVERY_PRIORITY if redelivered_from else INFER_PRIORITY))


def enqueue_reduce(job_id: str) -> None:
    _remember(job_id, reduce.apply_async(kwargs={"job_id": job_id}))


configure()
