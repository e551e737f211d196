"""The streaming reducer: shard results are read and parsed as they are written, so that after the
last shard only the coverage count and COCOeval remain.

A follower runs in every preprocessing pool (and so wherever the reducer task can run). It takes a
job's reducer lease (a tasks/lease.py Lease on the job's `reducer` key), follows the job's results, and
finishes the job. The `evaluator.reduce` task that the last shard's writer enqueues stays the safety
net: it waits while a live follower holds the lease and reduces in one go when none does (no pool
follower, or it died). Either way one reducer at a time holds the lease, and the coverage check is the
same.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from contextlib import contextmanager

from tasks.periodic import Periodic
from evaluation.streaming import StreamingCocoEval
from tasks.reduce import add_shard, finish_job, reduce_job, shard_evaluator
from tasks.shards import read_annotation
from tasks.state import FINISHED, JobState

log = logging.getLogger("tasks.streaming")
REDUCER_TTL_S = 10.0
POLL_S = 0.05  # an HLEN: how soon after a shard is written the follower reads it
RECENT_JOBS = 50  # how far back in the job list a follower looks for running jobs


class ResultStream:
    """A job's shard results, fetched and parsed once each, as they are written; with an evaluation, each goes
    into it at once and only its image ids stay (the coverage count needs no more)."""

    def __init__(self, state: JobState, job_id: str, evaluation: StreamingCocoEval | None = None):
        self.state, self.job_id, self.evaluation = state, job_id, evaluation
        self.results: dict[int, dict] = {}

    def poll(self) -> int:
        """Fetch the results written since the last call; returns how many there are now."""
        if self.state.result_count(self.job_id) != len(self.results):
            fresh = self.state.results_except(self.job_id, self.results)
            for shard, payload in sorted(fresh.items()):
                if self.evaluation is not None:
                    add_shard(self.evaluation, payload)
                    payload = {"image_ids": payload["image_ids"], "unreadable": payload.get("unreadable", {})}
                self.results[shard] = payload
        return len(self.results)


@contextmanager
def frozen_heap():
    """What the process holds now (a job's parsed annotation file and its indexes: 190k objects for 10240 images)
    left out of the garbage collector's full passes while a job is followed. Each shard's parsing promotes objects
    enough to start a full pass every 13 shards or so, and each pass walked the ground truth: 34 ms a pass, 1.9 of
    8.0 s of the follower's work on 640 shards (bench/eval_stream.py's set). Objects freed meanwhile are freed as
    usual by their counts. After the job (its report saved) the heap is given back; a process that had frozen its
    start-up heap (workers/__main__.freeze_heap) collects the job's cycles, if any, and freezes what is left."""
    was_frozen = gc.get_freeze_count() > 0
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_frozen:
            gc.collect()
            gc.freeze()


def follow_job(state: JobState, job_id: str, stop: threading.Event | None = None) -> dict | None:
    """Accumulate a job's results until its last shard, then finish it; None when it ended otherwise.

    The caller holds the job's reducer lease.
    """
    params = state.params(job_id)
    annotation, images = read_annotation(params.annotation)
    expected = [im["id"] for im in images]
    shards = state.all_shards(job_id)
    stream = ResultStream(state, job_id, shard_evaluator(annotation, params.coco_eval))
    stop = stop or threading.Event()
    with frozen_heap():
        while True:
            status = state.status(job_id)
            if status is None or status in FINISHED:
                return None
            if stream.poll() >= len(shards):
                break
            if stop.wait(POLL_S):
                return None
        t_reduce_start = time.time()
        state.set_status(job_id, "reducing", t_reduce_start=t_reduce_start)
        return finish_job(state, job_id, params, expected, shards, stream.results, t_reduce_start,
                          annotation=annotation, evaluation=stream.evaluation)


def reduce_when_free(state: JobState, job_id: str, poll_s: float = 0.25) -> dict | None:
    """The reducer task's body: wait while a live follower reduces the job, else reduce it in one go."""
    lease = state.reducer_lease(job_id, REDUCER_TTL_S)
    while True:
        if state.status(job_id) in (None, *FINISHED):
            return state.report(job_id)
        if lease.try_acquire():
            lease.start_heartbeat()
            try:
                if state.status(job_id) in (None, *FINISHED):
                    return state.report(job_id)
                return reduce_job(state, job_id)
            finally:
                lease.release()
        time.sleep(poll_s)


class ReduceFollower:
    """Follows running jobs nobody else reduces, one at a time, on a periodic thread."""

    def __init__(self, state: JobState, interval_s: float = 0.5):
        self.state = state
        self._loop = Periodic("reduce follower", interval_s, self._round, log)

    def _running_jobs(self) -> list[str]:
        recent = self.state.recent_job_ids(RECENT_JOBS)
        return [j for j, status in zip(recent, self.state.statuses(recent)) if status == "running"]

    def _round(self) -> None:
        for job_id in self._running_jobs():
            lease = self.state.reducer_lease(job_id, REDUCER_TTL_S)
            if not lease.try_acquire():
                continue
            lease.start_heartbeat()
            try:
                follow_job(self.state, job_id, self._loop.stopping)
            except Exception as exc:  # noqa: BLE001 - the job is marked failed; keep following others
                log.error("reducing job %s: %s", job_id, exc)
            finally:
                lease.release()

    def start(self) -> "ReduceFollower":
        self._loop.start()
        return self

    def stop(self) -> None:
        self._loop.stop()
