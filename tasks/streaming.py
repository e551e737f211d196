"""The streaming reducer: shard results are read and parsed as they are written, so that after the
last shard only the coverage count and COCOeval remain.

A follower thread runs in every preprocessing pool (and so wherever the reducer task can run).
It takes a job's reducer lease (`job:{id}:reducer`, SET NX PX, heartbeat, compare-and-delete,
like the device lease), follows the job's results, and finishes the job. The `evaluator.reduce`
task that the last shard's writer enqueues stays the safety net: it waits while a live
follower holds the lease and reduces in one go when none does (no pool follower, or it died).
Either way one reducer at a time holds the lease, and the coverage check is the same.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

import redis

from tasks.reduce import finish_job, reduce_job
from tasks.shards import read_images
from tasks.state import FINISHED, JobState

log = logging.getLogger("tasks.streaming")
_EXTEND = (Path(__file__).with_name("reducer_extend.lua")).read_text()
_RELEASE = (Path(__file__).with_name("reducer_release.lua")).read_text()
REDUCER_TTL_S = 10.0
POLL_S = 0.1
RECENT_JOBS = 50  # how far back in the job list a follower looks for running jobs


def reducer_key(job_id: str) -> str:
    return f"job:{job_id}:reducer"


class ReducerLease:
    """Who reduces a job right now: one holder, kept alive by a heartbeat thread."""

    def __init__(self, client: redis.Redis, job_id: str, ttl_s: float = REDUCER_TTL_S):
        self.r = client
        self.key = reducer_key(job_id)
        self.ttl_ms = int(ttl_s * 1000)
        self.token: str | None = None
        self._extend = client.register_script(_EXTEND)
        self._release = client.register_script(_RELEASE)
        self._stop = threading.Event()

    def try_acquire(self) -> bool:
        token = secrets.token_hex(16)
        record = {"token": token, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        if self.r.set(self.key, json.dumps(record), nx=True, px=self.ttl_ms):
            self.token = token
            self._stop.clear()
            threading.Thread(target=self._beat, name=f"reducer-heartbeat-{self.key}", daemon=True).start()
            return True
        return False

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000.0):
            try:
                if not self._extend(keys=[self.key], args=[self.token, self.ttl_ms]):
                    log.error("lost the reducer lease %s", self.key)
                    return
            except redis.RedisError as exc:
                log.warning("reducer heartbeat for %s failed: %s", self.key, exc)

    def release(self) -> None:
        self._stop.set()
        if self.token is not None:
            self._release(keys=[self.key], args=[self.token])
            self.token = None


class ResultStream:
    """A job's shard results, fetched and parsed once each, as they are written."""

    def __init__(self, state: JobState, job_id: str):
        self.state = state
        self.key = f"job:{job_id}:results"
        self.results: dict[int, dict] = {}

    def poll(self) -> int:
        """Fetch the results written since the last call; returns how many there are now."""
        if self.state.r.hlen(self.key) != len(self.results):
            fresh = [k for k in self.state.r.hkeys(self.key) if int(k) not in self.results]
            if fresh:
                for k, raw in zip(fresh, self.state.r.hmget(self.key, fresh)):
                    self.results[int(k)] = json.loads(raw)
        return len(self.results)


def follow_job(state: JobState, job_id: str, stop: threading.Event | None = None) -> dict | None:
    """Accumulate a job's results until its last shard, then finish it; None when it ended otherwise.

    The caller holds the job's reducer lease.
    """
    params = state.params(job_id)
    expected = [im["id"] for im in read_images(params.annotation)]
    shards = state.all_shards(job_id)
    stream = ResultStream(state, job_id)
    while True:
        status = state.status(job_id)
        if status is None or status in FINISHED:
            return None
        if stream.poll() >= len(shards):
            break
        if stop is not None and stop.wait(POLL_S):
            return None
        if stop is None:
            time.sleep(POLL_S)
    t_reduce_start = time.time()
    state.set_status(job_id, "reducing", t_reduce_start=t_reduce_start)
    return finish_job(state, job_id, params, expected, shards, stream.results, t_reduce_start)


def reduce_when_free(state: JobState, job_id: str, poll_s: float = 0.25) -> dict | None:
    """The reducer task's body: wait while a live follower reduces the job, else reduce it in one go."""
    lease = ReducerLease(state.r, job_id)
    while True:
        if state.status(job_id) in (None, *FINISHED):
            return state.report(job_id)
        if lease.try_acquire():
            try:
                if state.status(job_id) in (None, *FINISHED):
                    return state.report(job_id)
                return reduce_job(state, job_id)
            finally:
                lease.release()
        time.sleep(poll_s)


class ReduceFollower:
    """A daemon thread that follows running jobs nobody else reduces, one at a time."""

    def __init__(self, state: JobState, interval_s: float = 0.5):
        self.state = state
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reduce-follower", daemon=True)

    def _running_jobs(self) -> list[str]:
        recent = self.state.r.zrevrange("jobs", 0, RECENT_JOBS - 1)[::-1]
        return [j for j, status in zip(recent, self.state.statuses(recent)) if status == "running"]

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                for job_id in self._running_jobs():
                    lease = ReducerLease(self.state.r, job_id)
                    if not lease.try_acquire():
                        continue
                    try:
                        follow_job(self.state, job_id, self._stop)
                    except Exception as exc:  # noqa: BLE001 - the job is marked failed; keep following others
                        log.error("reducing job %s: %s", job_id, exc)
                    finally:
                        lease.release()
            except redis.RedisError as exc:
                log.debug("reduce follower: %s", exc)

    def start(self) -> "ReduceFollower":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
