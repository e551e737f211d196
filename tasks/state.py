"""Job state in Redis: one hash per job, shard plans, shard results written once, batch timings.

The key layout is tasks/keys.py's; every read and write of it by the rest of the product goes
through JobState (and the leases of tasks/lease.py), so no other module spells a key.
"""
from __future__ import annotations

import json
import time

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from tasks.keys import Keys, prefix_from_env
from tasks.lease import DeviceLease, Lease, LeaseRegistry
from tasks.outage import RideOutRetry, refused
from tasks.params import JobParams
from tasks.queues import QueuedTask, queued_tasks, remove_queued
from tasks.scripts import Scripts
from tasks.settings import SOCKET_TIMEOUT_S, BrokerTls, uses_tls

STATUSES = ("queued", "running", "reducing", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")


BrokerError = redis.RedisError  # what a Redis that does not answer raises


def tls_options(url: str, tls: BrokerTls | None = None) -> dict:
    """redis-py's ssl_* keywords for a rediss:// URL (tls None: the files the environment names); none for redis://."""
    if not uses_tls(url):
        return {}
    return (tls if tls is not None else BrokerTls.from_env()).ssl_options()


def connect(url: str, tls: BrokerTls | None = None, ride_out_s: float | None = None) -> redis.Redis:
    """A decoded-string client; redis-py's pool reconnects after a fork. rediss:// verifies the server against
    `tls.ca` and presents `tls.cert`. With `ride_out_s`, every command retries through a broker outage for up
    to that long (workers); without, a few quick retries only (a command a person watches rides out outages
    itself: tasks/outage.py)."""
    retry = RideOutRetry(ride_out_s) if ride_out_s else Retry(ExponentialBackoff(cap=0.5, base=0.05), 3,
                                                              is_retryable=lambda exc: not refused(exc))
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, retry=retry,
                                socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5.0, socket_keepalive=True,
                                **tls_options(url, tls))


def answers(url: str, timeout_s: float = 0.5, tls: BrokerTls | None = None) -> bool:
    """Whether a Redis answers PING at `url` now (a server just started, say)."""
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=timeout_s, **tls_options(url, tls)).ping())
    except redis.RedisError:
        return False


class JobState:
    """Every read and write of job state goes through here, so the key layout lives in one place.

    `broker_url` (what `open` gives) lets it send tasks too (`tasks`, tasks/enqueue.py).
    """

    def __init__(self, client: redis.Redis, keys: Keys | None = None, broker_url: str | None = None,
                 tls: BrokerTls | None = None):
        self.r = client
        self.keys = keys or Keys(prefix_from_env())
        self.broker_url = broker_url
        self.tls = tls if tls is not None else BrokerTls.from_env()  # the task sender's connection uses the same files
        self.scripts = Scripts(client)
        self.leases = LeaseRegistry(client, self.keys)
        self._enqueuer = None

    @classmethod
    def open(cls, url: str, keys: Keys | None = None, tls: BrokerTls | None = None,
             ride_out_s: float | None = None) -> "JobState":
        """Job state on the broker at `url`; `ride_out_s`: how long each command waits through an outage."""
        return cls(connect(url, tls, ride_out_s), keys, url, tls)

    @property
    def tasks(self):
        """The task sender of this broker (tasks/enqueue.py), made on first use."""
        if self._enqueuer is None:
            from tasks.enqueue import Enqueuer
            if self.broker_url is None:
                raise RuntimeError("this JobState was made without a broker URL: use JobState.open(url)")
            self._enqueuer = Enqueuer(self, self.broker_url)
        return self._enqueuer

    def ping(self) -> bool:
        return bool(self.r.ping())

    def _job(self, job_id: str) -> str:
        return self.keys.job(job_id)

    def _part(self, job_id: str, part: str) -> str:
        return self.keys.job_part(job_id, part)

    # -- leases ------------------------------------------------------------------------------------------
    def device_lease(self, device: str, ttl_s: float, host: str | None = None, pid: int | None = None) -> DeviceLease:
        return DeviceLease(self.r, device, ttl_s, host, pid, keys=self.keys)

    def reducer_lease(self, job_id: str, ttl_s: float) -> Lease:
        return Lease(self.r, self._part(job_id, "reducer"), ttl_s)

    def reducer_held(self, job_id: str) -> bool:
        return bool(self.r.exists(self._part(job_id, "reducer")))

    # -- creation and status -------------------------------------------------------------------
    def create(self, params: JobParams, shards: list[list[dict]]) -> None:
        """Record a job and its shard plan (status queued)."""
        key = self._job(params.job_id)
        now = time.time()
        with self.r.pipeline() as p:
            p.delete(*[k for k in self.keys.job_parts(params.job_id) if not k.endswith(":tasks")])
            p.hset(key, mapping={
                "params": json.dumps(params.to_dict()), "status": "queued",
                "n_images": sum(len(s) for s in shards), "n_shards": len(shards),
                "images_done": 0, "shards_done": 0, "images_inferred": 0, "t_submit": now,
            })
            if shards:
                p.hset(self._part(params.job_id, "shards"),
                       mapping={str(i): json.dumps(shard) for i, shard in enumerate(shards)})
            p.zadd(self.keys.jobs(), {params.job_id: now})
            p.execute()

    def note_enqueued(self, job_id: str) -> None:
        """Every message of the job was sent (submit, resume): a shard without one from now on was lost."""
        self.r.hset(self._job(job_id), "t_enqueued", time.time())

    def exists(self, job_id: str) -> bool:
        return bool(self.r.exists(self._job(job_id)))

    def params(self, job_id: str) -> JobParams:
        raw = self.r.hget(self._job(job_id), "params")
        if raw is None:
            raise KeyError(f"no such job {job_id}")
        return JobParams.from_dict(json.loads(raw))

    def summary(self, job_id: str) -> dict:
        """The job hash with numbers decoded (params left out)."""
        raw = self.r.hgetall(self._job(job_id))
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
        return self.r.hget(self._job(job_id), "status")

    def statuses(self, job_ids: list[str]) -> list[str | None]:
        """The status of each job, in one round trip."""
        with self.r.pipeline(transaction=False) as p:
            for job_id in job_ids:
                p.hget(self._job(job_id), "status")
            return p.execute()

    def set_status(self, job_id: str, status: str, **fields) -> None:
        assert status in STATUSES, status
        self.r.hset(self._job(job_id), mapping={"status": status, **fields})

    def fail(self, job_id: str, error: str) -> None:
        """Mark a job failed with a one-line reason, unless it already finished."""
        if self.status(job_id) not in FINISHED:
            self.set_status(job_id, "failed", error=error, t_done=time.time())

    def claim_reduce(self, job_id: str) -> bool:
        """True exactly once per job: whoever gets it enqueues the reducer."""
        return bool(self.r.hsetnx(self._job(job_id), "reduce_enqueued", time.time()))

    def job_ids(self) -> list[str]:
        return list(self.r.zrange(self.keys.jobs(), 0, -1))

    def recent_job_ids(self, count: int) -> list[str]:
        """The last `count` jobs, oldest first."""
        return list(self.r.zrevrange(self.keys.jobs(), 0, count - 1))[::-1]

    def n_shards(self, job_id: str) -> int:
        return int(self.r.hget(self._job(job_id), "n_shards") or 0)

    def reopen(self, job_id: str) -> None:
        """A resumed job runs again: its error and end time go, its reducer may be claimed again."""
        self.r.hdel(self._job(job_id), "error", "t_done")
        self.set_status(job_id, "running")

    def allow_reduce_again(self, job_id: str) -> None:
        self.r.hdel(self._job(job_id), "reduce_enqueued")

    def note_resume(self, job_id: str) -> None:
        """Count a resume (the report says end-to-end FPS includes an interruption)."""
        with self.r.pipeline() as p:
            p.hincrby(self._job(job_id), "resumes", 1)
            p.hset(self._job(job_id), "t_resumed", time.time())
            p.execute()

    def note_preprocessing(self, job_id: str, shard: int) -> None:
        """A preprocessing pool took up the shard (its message was not lost, whatever becomes of the pool)."""
        self.r.sadd(self._part(job_id, "preprocessed"), shard)

    def preprocessing_taken(self, job_id: str) -> set[int]:
        return {int(s) for s in self.r.smembers(self._part(job_id, "preprocessed"))}

    def wants_preprocessing(self, job_id: str) -> bool:
        """Whether the job's shards were sent to a preprocessing pool (a store that was not known warm)."""
        return int(self.r.hget(self._job(job_id), "preprocess_tasks") or 0) > 0

    def add_pool_counts(self, job_id: str, preprocessed: int, store_hits: int) -> None:
        """Where preprocessing happened (the report shows it once per sweep)."""
        with self.r.pipeline() as p:
            p.hincrby(self._job(job_id), "pool_preprocessed", preprocessed)
            p.hincrby(self._job(job_id), "pool_store_hits", store_hits)
            p.execute()

    def delete_job(self, job_id: str) -> None:
        """Every key of the job (benchmarks keep Redis small between jobs)."""
        with self.r.pipeline() as p:
            p.delete(*self.keys.job_parts(job_id))
            p.zrem(self.keys.jobs(), job_id)
            p.execute()

    def job_memory_mb(self, job_id: str) -> float:
        """MB of every key of the job (Redis' own MEMORY USAGE)."""
        return sum(self.r.memory_usage(key, samples=0) or 0 for key in self.keys.job_parts(job_id)) / 1e6

    # -- tasks and queues ---------------------------------------------------------------------------------
    def remember_task(self, job_id: str, task_id: str) -> None:
        """Every task id a job was sent under, so that `cancel` can revoke them all."""
        self.r.sadd(self._part(job_id, "tasks"), task_id)

    def task_ids(self, job_id: str) -> list[str]:
        return sorted(self.r.smembers(self._part(job_id, "tasks")))

    def queued(self, queues: list[str], job_id: str | None = None) -> list[QueuedTask]:
        """Messages waiting in `queues` (every priority), optionally only those of `job_id`."""
        return queued_tasks(self.r, [self.keys.queue(q) for q in queues], job_id)

    def unqueue(self, tasks: list[QueuedTask]) -> int:
        """Take these messages out of their lists; returns how many were still there."""
        return remove_queued(self.r, tasks)

    # -- workers --------------------------------------------------------------------------------------------
    def register_worker(self, host: str, device: str, pid: int, record: dict) -> None:
        self.r.hset(self.keys.workers(), f"{host}/{device}/{pid}", json.dumps(record))

    def workers(self) -> list[dict]:
        return [json.loads(raw) for raw in self.r.hvals(self.keys.workers())]

    def dashboard_lease(self, url: str, ttl_s: float) -> Lease:
        """Held by the running dashboard: its record names the URL that job reports link to."""
        return Lease(self.r, self.keys.dashboard(), ttl_s, fields={"url": url})

    def dashboard(self) -> dict | None:
        """The running dashboard's lease record (url, since, host, pid), None when none runs."""
        raw = self.r.get(self.keys.dashboard())
        return json.loads(raw) if raw else None

    # -- shards and results ----------------------------------------------------------------------
    def shard_items(self, job_id: str, shard: int) -> list[dict]:
        raw = self.r.hget(self._part(job_id, "shards"), str(shard))
        if raw is None:
            raise KeyError(f"job {job_id} has no shard {shard}")
        return json.loads(raw)

    def all_shards(self, job_id: str) -> dict[int, list[dict]]:
        raw = self.r.hgetall(self._part(job_id, "shards"))
        return {int(k): json.loads(v) for k, v in raw.items()}

    def shard_start(self, job_id: str, shard: int) -> tuple[str | None, bool, JobParams | None]:
        """What a device checks before a shard, in one round trip: the job's status, whether the shard has its
        result already, the job's parameters (None when the job is gone)."""
        with self.r.pipeline(transaction=False) as p:
            p.hget(self._job(job_id), "status")
            p.hexists(self._part(job_id, "results"), str(shard))
            p.hget(self._job(job_id), "params")
            status, written, raw = p.execute()
        return status, bool(written), JobParams.from_dict(json.loads(raw)) if raw else None

    def has_result(self, job_id: str, shard: int) -> bool:
        return bool(self.r.hexists(self._part(job_id, "results"), str(shard)))

    def write_result(self, job_id: str, shard: int, payload: dict, fence_key: str, fence: int) -> tuple[str, int]:
        """One fenced HSETNX: ("written" | "duplicate" | "stale", shards done so far)."""
        status, done = self.scripts.write_result(
            keys=[fence_key, self._part(job_id, "results"), self._job(job_id)],
            args=[fence, str(shard), encode_result(payload), len(payload["image_ids"]),
                  int((payload.get("store") or {}).get("hits", 0))])
        return {1: "written", 0: "duplicate", -1: "stale"}[int(status)], int(done)

    def results(self, job_id: str) -> dict[int, dict]:
        raw = self.r.hgetall(self._part(job_id, "results"))
        return {int(k): decode_result(v) for k, v in raw.items()}

    def result_count(self, job_id: str) -> int:
        return int(self.r.hlen(self._part(job_id, "results")))

    def results_except(self, job_id: str, known: set[int] | dict) -> dict[int, dict]:
        """The results of shards not in `known`, parsed (the streaming reducer fetches each once)."""
        key = self._part(job_id, "results")
        fresh = [k for k in self.r.hkeys(key) if int(k) not in known]
        return {int(k): decode_result(raw) for k, raw in zip(fresh, self.r.hmget(key, fresh))} if fresh else {}

    def shards_without_result(self, job_id: str) -> list[int]:
        """What `resume` re-enqueues."""
        done = {int(k) for k in self.r.hkeys(self._part(job_id, "results"))}
        return [i for i in range(self.n_shards(job_id)) if i not in done]

    # -- lost work (tasks/recovery.py) ----------------------------------------------------------------------
    def claim_recovery_round(self, interval_s: float) -> bool:
        """True for one reaper per interval over the whole cluster: that one looks for lost work."""
        return bool(self.r.set(self.keys.recovery(), self.broker_url or "1", nx=True, px=int(interval_s * 1000)))

    def enqueued_running_jobs(self, count: int) -> list[str]:
        """Of the last `count` jobs, those running or reducing whose messages were all sent."""
        recent = self.recent_job_ids(count)
        with self.r.pipeline(transaction=False) as p:
            for job_id in recent:
                p.hmget(self._job(job_id), "status", "t_enqueued")
            rows = p.execute()
        return [j for j, (status, enqueued) in zip(recent, rows) if status in ("running", "reducing") and enqueued]

    def suspects(self, job_id: str) -> tuple[set[int], bool, set[int], float | None]:
        """What the last check found unaccounted for: shards, the reduce, shards' preprocessing, and when."""
        raw = self.r.hgetall(self._part(job_id, "suspects"))
        if not raw:
            return set(), False, set(), None
        return (set(json.loads(raw["shards"])), raw.get("reduce") == "1", set(json.loads(raw.get("preprocess", "[]"))),
                float(raw["t"]))

    def set_suspects(self, job_id: str, shards: list[int], reduce: bool, preprocess: list[int] = ()) -> None:
        self.r.hset(self._part(job_id, "suspects"), mapping={
            "shards": json.dumps(sorted(shards)), "reduce": int(reduce), "preprocess": json.dumps(sorted(preprocess)),
            "t": time.time()})

    # -- batch timings and the report --------------------------------------------------------------
    def record_batch(self, job_id: str, record: dict) -> None:
        with self.r.pipeline() as p:
            p.rpush(self._part(job_id, "batches"), json.dumps(record))
            p.hincrby(self._job(job_id), "images_inferred", int(record["size"]))
            p.execute()

    def batches(self, job_id: str) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(self._part(job_id, "batches"), 0, -1)]

    def record_shard_time(self, job_id: str, device: str, images: int, seconds: float) -> None:
        """How long a device took for a whole shard (loading included): what the straggler rule compares with."""
        self.r.rpush(self._part(job_id, "shard_times"), json.dumps({"device": device, "images": images,
                                                                   "seconds": seconds}))

    def shard_times(self, job_id: str, last: int = 256) -> list[dict]:
        return [json.loads(x) for x in self.r.lrange(self._part(job_id, "shard_times"), -last, -1)]

    def mark_reissued(self, job_id: str, shard: int, record: dict) -> bool:
        """True the first time a shard is given to a second device (never twice)."""
        return bool(self.r.hsetnx(self._part(job_id, "reissued"), str(shard), json.dumps(record)))

    def reissued(self, job_id: str) -> dict[int, dict]:
        return {int(k): json.loads(v) for k, v in self.r.hgetall(self._part(job_id, "reissued")).items()}

    def save_report(self, job_id: str, report: dict) -> None:
        self.r.set(self._part(job_id, "report"), json.dumps(report))

    def report(self, job_id: str) -> dict | None:
        raw = self.r.get(self._part(job_id, "report"))
        return json.loads(raw) if raw else None


def encode_result(payload: dict) -> bytes:
    """A shard's result as JSON: orjson (about 20x json's speed on a shard's thousand detections), or json where
    a backend answered a non-finite number (`finite` False), which json writes as NaN / Infinity and orjson as
    null."""
    return orjson.dumps(payload) if payload.get("finite", True) else json.dumps(payload).encode()


def decode_result(raw: bytes | str) -> dict:
    """`encode_result`'s inverse (orjson reads no NaN: json does)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
