"""Sending the evaluator's tasks to one broker: JSON kwargs only, by task name (this module imports no task code).

Every message goes over this broker's own connection (never a process-wide one), so a process that talks
to several brokers (tests, a benchmark) sends each message where it belongs; every task id is remembered
in the job so that `cancel` can revoke it. A running shard's progress is read from the same broker's results.
"""
from __future__ import annotations

from celery.app import backends

from tasks.app import app
from tasks.settings import uses_tls

INFER_PRIORITY = 6  # Redis lists are polled by priority, 0 first:
REDELIVERY_PRIORITY = 0  # a shard given back by the reaper jumps the queue


class Enqueuer:
    """The task sender of one broker; made by JobState.tasks."""

    def __init__(self, state, broker_url: str):
        self.state = state
        self.broker_url = broker_url
        self._results = None
        # kombu's keys under this deployment's prefix and TLS as the state's, whatever the process's settings say
        self.connection = app.connection_for_write(
            broker_url, transport_options={"global_keyprefix": state.keys.kombu_prefix},
            ssl=state.tls.ssl_options() if uses_tls(broker_url) else False)

    def _send(self, job_id: str, name: str, kwargs: dict, priority: int | None = None) -> str:
        result = app.send_task(name, kwargs=kwargs, priority=priority, connection=self.connection,
                               ignore_result=True)  # job state lives in the job's keys, not in task results
        self.state.remember_task(job_id, result.id)
        return result.id

    def job(self, job_id: str, n_shards: int, batch: int, preprocess_first: bool = True,
            shards: list[int] | None = None) -> None:
        """Preprocessing for every shard first (unless the store is known warm), then inference, in shard order."""
        shards = list(range(n_shards)) if shards is None else shards
        if preprocess_first:
            for shard in shards:
                self.preprocess(job_id, shard, batch)
        for shard in shards:
            self.infer(job_id, shard, batch)

    def preprocess(self, job_id: str, shard: int, batch: int) -> str:
        return self._send(job_id, "evaluator.preprocess", {"job_id": job_id, "shard": shard, "batch": batch,
                                                           "device": "cpu"})

    def infer(self, job_id: str, shard: int, batch: int, redelivered_from: str | None = None) -> str:
        kwargs = {"job_id": job_id, "shard": shard, "batch": batch}
        if redelivered_from:
            kwargs["redelivered_from"] = redelivered_from
        return self._send(job_id, "evaluator.infer", kwargs,
                          REDELIVERY_PRIORITY if redelivered_from else INFER_PRIORITY)

    def reduce(self, job_id: str) -> str:
        return self._send(job_id, "evaluator.reduce", {"job_id": job_id})

    def revoke(self, task_ids: list[str]) -> None:
        app.control.revoke(task_ids, connection=self.connection)

    @property
    def results(self):
        """This broker's result backend, where a running task keeps its state (made as Celery makes the app's)."""
        if self._results is None:
            backend_cls, url = backends.by_url(self.broker_url, app.loader)
            self._results = backend_cls(app=app, url=url)
        return self._results

    def progress(self, task_id: str) -> dict | None:
        """A running shard's last PROGRESS (images done of the shard's, images/s, batch, device, host), None before
        its first batch and after it ends."""
        result = app.AsyncResult(task_id, backend=self.results)
        return dict(result.info) if result.state == "PROGRESS" and isinstance(result.info, dict) else None

    def running(self, job_id: str | None = None) -> list[dict]:
        """Every shard a device runs now (of `job_id`, or of every job): its lease's record (job, shard, device as
        host/device, since, task id) with `progress`, its task's last PROGRESS or None."""
        return [{**shard, "progress": self.progress(shard["task"]) if shard.get("task") else None}
                for shard in self.state.leases.in_flight(job_id)]

    def active(self, timeout_s: float = 1.0) -> dict:
        """What the workers answering a broadcast run now: {worker: [task, ...]}."""
        return app.control.inspect(timeout=timeout_s, connection=self.connection).active() or {}
