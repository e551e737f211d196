"""Every Redis key of the evaluator, under one prefix: the layout is written down here and nowhere else.

The prefix (settings `key_prefix`, `$EVALUATOR_PREFIX`, default `evaluator`) lets two deployments share a
Redis: Celery and kombu prefix their own keys (queues, unacked messages, results, events) with the same
string through their `global_keyprefix` transport option (tasks/settings.py).

| key | type | what |
|---|---|---|
| `P:jobs` | sorted set | job ids by submit time |
| `P:job:ID` | hash | params (JSON), status, counts (n_images, n_shards, images_done, shards_done, images_inferred, device_store_hits, pool_*, refused_stale, refused_duplicate), timestamps, error, manifest, resumes |
| `P:job:ID:shards` | hash | shard -> JSON list of {"id", "file", "w", "h"} |
| `P:job:ID:results` | hash | shard -> JSON payload, written once (write_result.lua) |
| `P:job:ID:batches` | list | JSON batch records (device, shard, size, t_start, t_end, ...) |
| `P:job:ID:shard_times` | list | JSON {"device", "images", "seconds"}: each shard's wall time on its device |
| `P:job:ID:reissued` | hash | shard -> why: shards given to a second device (the straggler rule, once each) |
| `P:job:ID:reducer` | string, TTL | the reducer lease (token record) |
| `P:job:ID:report` | string | the reducer's report (JSON) |
| `P:job:ID:tasks` | set | every task id the job was sent under (for `cancel`) |
| `P:job:ID:preprocessed` | set | shards a preprocessing pool took up (their preprocessing message was not lost) |
| `P:job:ID:suspects` | hash | `shards`, `preprocess` (JSON lists), `reduce` (0/1), `t`: what the last lost-work check found unaccounted for |
| `P:recovery` | string, TTL | held by the reaper whose lost-work check runs this interval (one over all reapers) |
| `P:lease:HOST:DEVICE` | string, TTL | a device lease (token record with its shard in flight) |
| `P:lease:HOST:DEVICE:fence` | counter | the device's fencing number, one more per acquisition |
| `P:leases` | hash | lease key -> its last record, no TTL (the reaper reads a dead holder's shard here) |
| `P:workers` | hash | HOST/DEVICE/PID -> the worker's registration (backend, attestation, versions, identity) |
| `P:dashboard` | string, TTL | the running dashboard's lease: its URL and since when (reports link to it) |

Queues (kombu lists, prefixed by kombu itself): `P:preprocess`, `P:infer`, `P:reduce`, with their
priority steps `P:infer\\x06\\x16N` (tasks/queues.py reads them for `cancel` and `resume`).
"""
from __future__ import annotations

import os

PREFIX_ENV = "EVALUATOR_PREFIX"
DEFAULT_PREFIX = "evaluator"


def prefix_from_env() -> str:
    return os.environ.get(PREFIX_ENV) or DEFAULT_PREFIX


class Keys:
    """The key names of one deployment (one prefix)."""

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def kombu_prefix(self) -> str:
        """What Celery and kombu put before their own keys (queues, results, events)."""
        return f"{self.prefix}:"

    def jobs(self) -> str:
        return self._k("jobs")

    def job(self, job_id: str) -> str:
        return self._k("job", job_id)

    def job_part(self, job_id: str, part: str) -> str:
        """`shards`, `results`, `batches`, `shard_times`, `reissued`, `reducer`, `report`, `tasks`, `preprocessed`,
        `suspects`."""
        assert part in JOB_PARTS, part
        return self._k("job", job_id, part)

    def job_parts(self, job_id: str) -> list[str]:
        """Every key of a job."""
        return [self.job(job_id)] + [self.job_part(job_id, part) for part in JOB_PARTS]

    def lease(self, host: str, device: str) -> str:
        return self._k("lease", host, device)

    def fence(self, lease_key: str) -> str:
        return f"{lease_key}:fence"

    def leases(self) -> str:
        return self._k("leases")

    def workers(self) -> str:
        return self._k("workers")

    def recovery(self) -> str:
        return self._k("recovery")

    def dashboard(self) -> str:
        return self._k("dashboard")

    def queue(self, name: str) -> str:
        """A kombu queue's list key (kombu adds the prefix itself when it sends and receives)."""
        return f"{self.kombu_prefix}{name}"


JOB_PARTS = ("shards", "results", "batches", "shard_times", "reissued", "reducer", "report", "tasks", "preprocessed",
             "suspects")
