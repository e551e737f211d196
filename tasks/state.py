"""Job state in Redis: one hash per job, shard plans, shard results written once, batch timings.

Keys (DESIGN.md section 7):
  job:{id}            hash: params (JSON), status, n_images, n_shards, images_done, shards_done,
                      images_inferred, device_store_hits, t_submit, t_running, t_reduce_start, t_done, error
  job:{id}:shards     hash shard -> JSON list of {"id", "file", "w", "h"}
  job:{id}:results    hash shard -> JSON payload, written once (write_result.lua)
  job:{id}:batches    list of JSON batch records (device, shard, size, t_start, t_end, ...)
  job:{id}:shard_times list of JSON {"device", "images", "seconds"}: each shard's wall time on its device
  job:{id}:reissued   hash shard -> why: shards given to a second device by the straggler rule (once each)
  job:{id}:reducer    the reducer lease (tasks/streaming.py)
  job:{id}:report     the reducer's report (JSON)
  jobs                sorted set of job ids by submit time
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from tasks.params import JobParams

STATUSES = ("queued", "running", "reducing", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
_WRITE_RESULT = (Path(__file__).with_name("write_result.lua")).read_text()


def connect(url: str) -> redis.Redis:
    """A decoded-string client; redis-py's pool reconnects after a fork."""
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30)


def job_key(job_id: str) -> str:
    return f"job:{job_id}"


class JobState:
    """Every read and write of job state goes through here, so the key layout lives in one place."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._write_result = client.register_script(_WRITE_RESULT)

    # -- creation and status -------------------------------------------------------------------
    def create(self, params: JobParams, shards: list[list[dict]]) -> None:
        """Record a job and its shard plan (status queued)."""
        key = job_key(params.job_id)
        now = time.time()
        with self.r.pipeline() as p:
            p.delete(key, f"{key}:shards", f"{key}:results", f"{key}:batches", f"{key}:report",
                     f"{key}:shard_times", f"{key}:reissued")
            p.hset(key, mapping={
                "params": json.dumps(params.to_dict()), "status": "queued",
                "n_images": sum(len(s) for s in shards), "n_shards": len(shards),
                "images_done": 0, "shards_done": 0, "images_inferred": 0, "t_submit": now,
            })
            if shards:
                p.hset(f"{key}:shards", mapping={str(i): json.dumps(s) for i, s in enumerate(shards)})
            p.zadd("jobs", {params.job_id: now})
            p.execute()

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(job_key(job_id)))

    def params(self, job_id: str) -> JobParams:
        raw = self.r.hget(job_key(job_id), "params")
        if raw is None:
            raise KeyError(f"no such job {job_id}")
        return JobParams.from_dict(json.loads(raw))

    def summary(self, job_id: str) -> dict:
        """The job hash with numbers decoded (params left out)."""
        raw = self.r.hgetall(job_key(job_id))
        out: dict = {}
        for k, v in raw.items():
            if k == "params":
                continue
            try:
                out[k] = int(v)
            except ValueError:
                try:
                    out[k] = float(v)
                except ValueError:
                    out[k] = v
        return out

    def status(self, job_id: str) -> str | None:
        return self.r.hget(job_key(job_id), "status")

    def statuses(self, job_ids: list[str]) -> list[str | None]:
        """The status of each job, in one round trip."""
        with self.r.pipeline(transaction=False) as p:
            for job_id in job_ids:
                p.hget(job_key(job_id), "status")
            return p.execute()

    def set_status(self, job_id: str, status: str, **fields) -> None:
        assert status in STATUSES, status
        self.r.hset(job_key(job_id), mapping={"status": status, **fields})

    def fail(self, job_id: str, error: str) -> None:
        """Mark a job failed with a one-line reason, unless it already finished."""
        if self.status(job_id) not in FINISHED:
            self.set_status(job_id, "failed", error=error, t_done=time.time())

    def claim_reduce(self, job_id: str) -> bool:
        """True exactly once per job: whoever gets it enqueues the reducer."""
        return bool(self.r.hsetnx(job_key(job_id), "reduce_enqueued", time.time()))

    def job_ids(self) -> list[str]:
        return list(self.r.zrange("jobs", 0, -1))

    # -- shards and results ----------------------------------------------------------------------
    def shard_items(self, job_id: str, shard: int) -> list[dict]:
        raw = self.r.hget(f"{job_key(job_id)}:shards", str(shard))
        if raw is None:
            raise KeyError(f"job {job_id} has no shard {shard}")
        return json.loads(raw)

    def all_shards(self, job_id: str) -> dict[int, list[dict]]:
        raw = self.r.hgetall(f"{job_key(job_id)}:shards")
        return {int(k): json.loads(v) for k, v in raw.items()}

    def has_result(self, job_id: str, shard: int) -> bool:
        return bool(self.r.hexists(f"{job_key(job_id)}:results", str(shard)))

    def write_result(self, job_id: str, shard: int, payload: dict, fence_key: str, fence: int) -> tuple[str, int]:
        """One fenced HSETNX: ("written" | "duplicate" | "stale", shards done so far)."""
        key = job_key(job_id)
        status, done = self._write_result(
            keys=[fence_key, f"{key}:results", key],
            args=[fence, str(shard), json.dumps(payload), len(payload["image_ids"]),
                  int((payload.get("store") or {}).get("hits", 0))])
        return {1: "written", 0: "duplicate", -1: "stale"}[int(status)], int(done)

    def results(self, job_id: str) -> dict[int, dict]:
        raw = self.r.hgetall(f"{job_key(job_id)}:results")
        return {int(k): json.loads(v) for k, v in raw.items()}

    def shards_without_result(self, job_id: str) -> list[int]:
        """What `resume` re-enqueues."""
        n = int(self.r.hget(job_key(job_id), "n_shards") or 0)
        done = {int(k) for k in self.r.hkeys(f"{job_key(job_id)}:results")}
        return [i for i in range(n) if i not in done]

    # -- batch timings and the report --------------------------------------------------------------
    def record_batch(self, job_id: str, record: dict) -> None:
        key = job_key(job_id)
        with self.r.pipeline() as p:
            p.rpush(f"{key}:batches", json.dumps(record))
            p.hincrby(key, "images_inferred", int(record["size"]))
            p.execute()

    def batches(self, job_id: str) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(f"{job_key(job_id)}:batches", 0, -1)]

    def record_shard_time(self, job_id: str, device: str, images: int, seconds: float) -> None:
        """How long a device took for a whole shard (loading included): what the straggler rule compares with."""
        self.r.rpush(f"{job_key(job_id)}:shard_times", json.dumps({"device": device, "images": images,
                                                                    "seconds": seconds}))

    def shard_times(self, job_id: str, last: int = 256) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(f"{job_key(job_id)}:shard_times", -last, -1)]

    def save_report(self, job_id: str, report: dict) -> None:
        self.r.set(f"{job_key(job_id)}:report", json.dumps(report))

    def report(self, job_id: str) -> dict | None:
        raw = self.r.get(f"{job_key(job_id)}:report")
        return json.loads(raw) if raw else None
